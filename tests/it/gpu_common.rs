//! GPU test contexts: lavapipe through Vulkan and llvmpipe through GL. Under `CI=true` a
//! missing adapter fails the test run; elsewhere the GPU tests say loudly that they skip.

use std::sync::{Arc, OnceLock};
use wgpu_rnn::gpu::{Context, ContextOptions};

/// Counts the adapters a feature-dependent test could check: prints what it skipped, and under
/// `CI=true` fails when it checked none (a test must never pass having asserted nothing there).
pub fn require_checked(test: &str, checked: usize, skipped: &[String]) {
    for s in skipped {
        crate::common::skip(&format!("in {test}: {s}"));
    }
    if in_ci() {
        assert!(checked > 0, "{test}: no adapter could run its checks (skipped: {skipped:?})");
    }
}

/// Whether the tests run under `CI=true` (where a skip for a missing adapter or feature fails).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn make(backends: wgpu::Backends) -> Option<Arc<Context>> {
    match Context::with_options(&ContextOptions { backends: Some(backends), adapter_name: None }) {
        Ok(c) => Some(c),
        Err(e) => {
            if in_ci() {
                panic!("CI=true but no {backends:?} adapter: {e}");
            }
            crate::common::skip(&format!("{backends:?} GPU tests: no adapter ({e}); run .ci/setup to install lavapipe"));
            None
        }
    }
}

/// One context per backend the tests cover (Vulkan, GL), shared by all tests in the binary.
pub fn contexts() -> &'static [Arc<Context>] {
    static CTX: OnceLock<Vec<Arc<Context>>> = OnceLock::new();
    CTX.get_or_init(|| [wgpu::Backends::VULKAN, wgpu::Backends::GL].into_iter().filter_map(make).collect())
}

/// The Vulkan context (lavapipe here), if any.
pub fn vulkan() -> Option<&'static Arc<Context>> {
    contexts().iter().find(|c| c.adapter_info().backend == wgpu::Backend::Vulkan)
}
