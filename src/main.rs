//! The `spark-wgpu` command line.

fn main() {
    quiet_headless_vulkan_layers();
    let cli = spark_wgpu::cli::parse();
    if let Err(e) = spark_wgpu::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Mesa's implicit Vulkan layer `VK_LAYER_MESA_device_select` connects to Wayland to find
/// the display's GPU and, on a headless machine, prints "error: XDG_RUNTIME_DIR is
/// invalid or not set in the environment." twice on every command. Without a display
/// there is nothing for it to select by (we choose the adapter ourselves: --adapter, or
/// wgpu's high-performance preference), so it is switched off by its documented
/// `NODEVICE_SELECT=1` (the layer's `disable_environment`) unless the user set it.
fn quiet_headless_vulkan_layers() {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if !set("WAYLAND_DISPLAY") && !set("DISPLAY") && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: first statement of `main`, before any thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}
