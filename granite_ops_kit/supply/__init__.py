"""The model supply chain: file listing, hashing, OMS statements, bundles, sign and verify.

Small typed steps, each in its own module, composed by `verify.py` and `sign.py`:
model_files (what is in the model) -> hashing (digests) -> statement (the signed manifest)
-> bundle (the Sigstore bundle on disk) -> trust (is the signature good, and whose is it).
"""
