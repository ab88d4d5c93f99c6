//! VM interface bindings: not built yet (issue: VM binder).
