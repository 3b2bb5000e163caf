#!/usr/bin/env bash
# Verify a gkit audit evidence export with bash, coreutils and OpenSSL only (no python, jq,
# grep or diffutils).
# Run it inside the unzipped export: bash verify.sh
# It checks: 1 every file against manifest.sha256; 2 every record's canonical bytes against
# its SHA-256; 3 the chain (sequence numbers and prev_hash inside each record); 4 the
# newest checkpoint's RFC 6962 Merkle root over the records it covers; 5 its Ed25519
# signature. Compare the printed key fingerprint with the one your organisation published.
set -euo pipefail
cd "$(dirname "$0")"
fail() { echo "FAILED: $*" >&2; exit 1; }

sha256sum --quiet --strict -c manifest.sha256 || fail "a file differs from manifest.sha256"
sha256sum --quiet --strict -c hashes.sha256 || fail "a record's bytes do not match its hash"
[ "$(cut -d' ' -f1 hashes.sha256)" = "$(cut -f3 chain.tsv)" ] \
  || fail "chain.tsv and hashes.sha256 list different hashes"

expect="" prev=""
while IFS=$'\t' read -r seq prev_hash hash; do
  file=$(printf 'records/%08d.json' "$seq")
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

[ -f checkpoint/body.txt ] || { echo "no checkpoint in this export"; exit 0; }
hex2bin() { local h=$1 out="" k; for ((k = 0; k < ${#h}; k += 2)); do out+="\\x${h:k:2}"; done; printf '%b' "$out"; }
sha() { openssl dgst -sha256 -hex | cut -d' ' -f2; }
size=$(head -n 2 checkpoint/body.txt | tail -n 1)
mapfile -t level < <(od -An -v -tx1 checkpoint/leaves.bin | tr -d ' \n' | fold -w 64)
[ "${#level[@]}" -eq "$size" ] || fail "checkpoint covers $size records, leaves.bin holds ${#level[@]}"
for i in "${!level[@]}"; do
  [ "${level[$i]}" = "$(cut -f3 chain.tsv | head -n $((i + 1)) | tail -n 1)" ] \
    || fail "leaf $((i + 1)) differs from record $((i + 1))'s hash"
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
echo "checkpoint: $size records, root and signature OK"
echo "signer key sha256: $(openssl pkey -pubin -in checkpoint/public-key.pem -outform DER | sha256sum | cut -d' ' -f1)"
