//! The WGSL sources, embedded at build time by `build.rs`.

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// The source of `shaders/<name>.wgsl`.
pub fn shader_source(name: &str) -> Option<&'static str> {
    SHADERS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
