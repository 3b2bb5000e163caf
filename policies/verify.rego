# The rules `gkit verify` applies after the signature checks out. Evaluated by regopy (the
# OPA Rego language, Microsoft's rego-cpp engine); data.policy is the policy's JSON file,
# input holds the facts gkit established (signature, files, manifest).
package gkit.verify

import rego.v1

# File types that hold weights, by lower-case suffix (input.files[].ext). Pickle formats
# can run code when loaded.
weight_suffixes := {
	".safetensors": "safetensors", ".gguf": "gguf", ".bin": "pickle", ".pt": "pickle",
	".pth": "pickle", ".pkl": "pickle", ".pickle": "pickle", ".ckpt": "pickle",
	".h5": "hdf5", ".onnx": "onnx", ".msgpack": "msgpack", ".npz": "numpy", ".npy": "numpy",
}

weight_files := [f | some f in input.files; weight_suffixes[f.ext]]

disallowed_files := [f | some f in weight_files; not weight_suffixes[f.ext] in data.policy.weight_formats]

default allow := false

allow if count(deny) == 0

deny contains msg if {
	not input.signature.method in data.policy.methods
	msg := sprintf("the model is signed with method '%s'; policy '%s' accepts only %v",
		[input.signature.method, data.policy.id, data.policy.methods])
}

deny contains msg if {
	input.signature.method == "sigstore"
	data.policy.sigstore.issuer != null
	input.signature.issuer != data.policy.sigstore.issuer
	msg := sprintf("the signing certificate was issued through '%s'; policy '%s' requires '%s'",
		[input.signature.issuer, data.policy.id, data.policy.sigstore.issuer])
}

deny contains msg if {
	input.signature.method == "sigstore"
	count(data.policy.sigstore.identities) > 0
	count({i | some i in input.signature.identities; i in data.policy.sigstore.identities}) == 0
	msg := sprintf("the signer %v is not on policy '%s''s allow-list %v",
		[input.signature.identities, data.policy.id, data.policy.sigstore.identities])
}

deny contains msg if {
	input.signature.method == "key"
	count(data.policy.signers.public_keys) > 0
	not input.signature.key_fingerprint in data.policy.signers.public_keys
	msg := sprintf("the model is signed by key sha256:%s, which policy '%s' does not pin (it pins %v)",
		[input.signature.key_fingerprint, data.policy.id, data.policy.signers.public_keys])
}

deny contains msg if {
	input.signature.method == "certificate"
	count(data.policy.signers.certificate_roots) > 0
	not input.signature.root_fingerprint in data.policy.signers.certificate_roots
	msg := sprintf("the signing certificate chains to root sha256:%s, which policy '%s' does not pin (it pins %v)",
		[input.signature.root_fingerprint, data.policy.id, data.policy.signers.certificate_roots])
}

deny contains msg if {
	input.signature.method == "certificate"
	count(data.policy.signers.certificate_identities) > 0
	count({i | some i in input.signature.identities; i in data.policy.signers.certificate_identities}) == 0
	msg := sprintf("the signing certificate names %v, none of which policy '%s' pins (it pins %v)",
		[input.signature.identities, data.policy.id, data.policy.signers.certificate_identities])
}

# A signature whose ignore paths leave every weight out vouches for a config and a
# tokenizer only; the weights served would be whatever lies there.
deny contains msg if {
	data.policy.require_weight_file
	count(weight_files) == 0
	msg := sprintf("the signature covers no weight file (safetensors or GGUF); policy '%s' requires at least one", [data.policy.id])
}

deny contains msg if {
	some f in disallowed_files
	msg := sprintf("%s is a %s-format weight file; policy '%s' allows %v only",
		[f.name, weight_suffixes[f.ext], data.policy.id, data.policy.weight_formats])
}

deny contains msg if {
	some f in input.files
	f.symlink
	not data.policy.allow_symlinks
	msg := sprintf("%s is a symbolic link; policy '%s' does not allow symlinks", [f.name, data.policy.id])
}

deny contains msg if {
	input.manifest.legacy
	not data.policy.allow_legacy_predicate
	msg := sprintf("the signature uses the legacy v0.1 predicate; policy '%s' requires v1.0", [data.policy.id])
}

# What passed, so an allow decision says why too.
reasons contains msg if {
	input.signature.method in data.policy.methods
	msg := sprintf("signature method '%s' is accepted", [input.signature.method])
}

reasons contains msg if {
	input.signature.key_fingerprint in data.policy.signers.public_keys
	msg := sprintf("key sha256:%s is pinned", [input.signature.key_fingerprint])
}

reasons contains msg if {
	input.signature.root_fingerprint in data.policy.signers.certificate_roots
	msg := sprintf("certificate root sha256:%s is pinned", [input.signature.root_fingerprint])
}

reasons contains msg if {
	some i in input.signature.identities
	i in data.policy.sigstore.identities
	msg := sprintf("signer %s is on the allow-list", [i])
}

reasons contains msg if {
	count(disallowed_files) == 0
	msg := sprintf("%d weight file(s), all in allowed formats %v", [count(weight_files), data.policy.weight_formats])
}

decision := {"allow": allow, "deny": deny, "reasons": reasons}
