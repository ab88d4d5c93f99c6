//! Guest image builder and QEMU harness for end-to-end VM tests: not built yet.
