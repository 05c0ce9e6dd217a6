#!/usr/bin/env bash
# The whole test suite against the real services: brings the local stack up (installing
# what is missing), then format, lints and every test. README's second command; CI runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/stack.sh up --redis-cluster
# promtool lints /metrics in the tests (SPEC §3.4); Debian's prometheus package has it.
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
# tests/browser.rs drives Debian's headless Chromium through chromedriver (SPEC §11.2).
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# Integration tests need the stack; they fail (never skip) when a service is missing.
cargo test --all-targets --locked
