#!/usr/bin/env bash
# Verify a gkit audit evidence export with bash, coreutils and OpenSSL only (no python, jq,
# grep or diffutils).
# Run it inside the unzipped export: bash verify.sh [SIGNER_KEY_SHA256]
# It checks: 1 the folder holds only regular files, each listed in manifest.sha256 or one of
# the checkpoint's own three files; 2 every file against manifest.sha256; 3 every record's
# canonical bytes against its SHA-256; 4 the chain (sequence numbers and prev_hash inside
# each record); 5 the checkpoint: it covers every exported record, its RFC 6962 Merkle root
# over the leaves, its Ed25519 signature, and the manifest digest it signs. Nothing in the
# export is left unsigned. Give the signer key fingerprint your organisation published as
# the argument (or compare the one printed at the end): the key in the export vouches for
# nothing by itself.
set -euo pipefail
cd "$(dirname "$0")"
fail() { echo "FAILED: $*" >&2; exit 1; }
shopt -s globstar nullglob dotglob

[ -f manifest.sha256 ] && [ ! -L manifest.sha256 ] || fail "manifest.sha256 is missing"
[ -f checkpoint/body.txt ] && [ -f checkpoint/signature.bin ] \
  || fail "no checkpoint in this export: nothing in it is signed"
declare -A listed=([checkpoint/note.txt]=1 [checkpoint/body.txt]=1 [checkpoint/signature.bin]=1 [manifest.sha256]=1)
while read -r _ name; do
  [ -e "$name" ] || [ -L "$name" ] || fail "$name is missing (listed in manifest.sha256)"
  listed[$name]=1
done < manifest.sha256
for f in **; do
  if [ -L "$f" ]; then fail "$f is a symbolic link"; fi
  if [ -d "$f" ]; then
    [ "$f" = records ] || [ "$f" = checkpoint ] || fail "$f is an unexpected folder"
    continue
  fi
  [ -f "$f" ] || fail "$f is not a regular file"
  [ -n "${listed[$f]:-}" ] || fail "$f is not listed in manifest.sha256, so no signature covers it"
done

sha256sum --quiet --strict -c manifest.sha256 || fail "a file differs from manifest.sha256"
sha256sum --quiet --strict -c hashes.sha256 || fail "a record's bytes do not match its hash"
[ "$(cut -d' ' -f1 hashes.sha256)" = "$(cut -f3 chain.tsv)" ] \
  || fail "chain.tsv and hashes.sha256 list different hashes"
records=(records/*)
[ "${#records[@]}" -eq "$(wc -l < chain.tsv)" ] || fail "records/ and chain.tsv hold different records"

expect="" prev=""
while IFS=$'\t' read -r seq prev_hash hash; do
  file=$(printf 'records/%08d.json' "$seq")
  [ -f "$file" ] || fail "record $seq: $file is missing"
  body=$(cat "$file")
  [[ $body == *"\"seq\":$seq,"* ]] || fail "record $seq: $file does not hold seq $seq"
  [[ $body == *"\"prev_hash\":\"$prev_hash\""* ]] || fail "record $seq: prev_hash differs from chain.tsv"
  if [ -n "$expect" ] && [ "$seq" != "$expect" ]; then fail "record $seq: expected record $expect"; fi
  if [ -n "$prev" ] && [ "$prev_hash" != "$prev" ]; then
    fail "record $seq: prev_hash does not match record $((seq - 1))'s hash"
  fi
  expect=$((seq + 1)) prev=$hash
done < chain.tsv
echo "records: $(wc -l < chain.tsv) hashes and links OK"

hex2bin() { local h=$1 out="" k; for ((k = 0; k < ${#h}; k += 2)); do out+="\\x${h:k:2}"; done; printf '%b' "$out"; }
sha() { openssl dgst -sha256 -hex | cut -d' ' -f2; }
size=$(head -n 2 checkpoint/body.txt | tail -n 1)
signed_manifest=$(head -n 4 checkpoint/body.txt | tail -n 1)
[ "$signed_manifest" = "manifest.sha256 $(sha < manifest.sha256)" ] \
  || fail "the checkpoint does not sign this manifest.sha256"
[ "$(head -n 4 checkpoint/note.txt)" = "$(cat checkpoint/body.txt)" ] \
  || fail "checkpoint/note.txt and checkpoint/body.txt differ"
mapfile -t level < <(od -An -v -tx1 checkpoint/leaves.bin | tr -d ' \n' | fold -w 64)
[ "${#level[@]}" -eq "$size" ] || fail "checkpoint covers $size records, leaves.bin holds ${#level[@]}"
while IFS=$'\t' read -r seq _ hash; do
  [ "$seq" -le "$size" ] || fail "record $seq is not covered by the checkpoint (records 1..$size)"
  [ "${level[$((seq - 1))]}" = "$hash" ] || fail "leaf $seq differs from record $seq's hash"
done < chain.tsv
for i in "${!level[@]}"; do
  level[$i]=$({ printf '\x00'; hex2bin "${level[$i]}"; } | sha)
done
while [ "${#level[@]}" -gt 1 ]; do
  next=()
  for ((i = 0; i + 1 < ${#level[@]}; i += 2)); do
    next+=("$({ printf '\x01'; hex2bin "${level[$i]}"; hex2bin "${level[$((i + 1))]}"; } | sha)")
  done
  if [ $((${#level[@]} % 2)) -eq 1 ]; then next+=("${level[-1]}"); fi
  level=("${next[@]}")
done
root=$(head -n 3 checkpoint/body.txt | tail -n 1 | base64 -d | od -An -v -tx1 | tr -d ' \n')
[ "${level[0]}" = "$root" ] || fail "the checkpoint's Merkle root does not match records 1..$size"
openssl pkeyutl -verify -pubin -inkey checkpoint/public-key.pem -rawin \
  -in checkpoint/body.txt -sigfile checkpoint/signature.bin > /dev/null \
  || fail "the checkpoint signature does not verify"
echo "checkpoint: $size records, root, manifest and signature OK"
key_sha=$(openssl pkey -pubin -in checkpoint/public-key.pem -outform DER | sha256sum | cut -d' ' -f1)
if [ -n "${1:-}" ] && [ "$1" != "$key_sha" ]; then
  fail "signed by key sha256 $key_sha, not the expected $1"
fi
echo "signer key sha256: $key_sha${1:+ (the expected key)}"
