#!/usr/bin/env bash
# The whole test suite against the real services: brings the local stack up (installing
# what is missing), then format, lints and every test. README's second command; CI runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/stack.sh up
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# Integration tests need the stack; they fail (never skip) when a service is missing.
cargo test --all-targets --locked
