//! loom models of mirrorlog's cross-thread hand-offs live in `tests/`; this crate has no code.
//! Run: `cd loom-tests && RUSTFLAGS="--cfg loom" cargo test --release`.
