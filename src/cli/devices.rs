//! `spark-wgpu devices`.

use anyhow::{Result, bail};

use super::GpuArgs;
use crate::gpu::list_adapters;

pub fn run(gpu: &GpuArgs) -> Result<()> {
    // Every backend unless one was chosen (GL included: it is how some machines run).
    let mut choice = gpu.choice();
    if choice.backend.is_none() {
        choice.backend = Some("all".into());
    }
    let adapters = list_adapters(&choice)?;
    if adapters.is_empty() {
        bail!(
            "no GPU adapter found. On Linux without a GPU install Mesa's software Vulkan driver \
             (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`); otherwise install your GPU's Vulkan, Metal or DX12 driver."
        );
    }
    for (i, a) in adapters.iter().enumerate() {
        let l = &a.limits;
        println!("[{i}] {}", a.info.name);
        println!("    backend: {:?}   type: {:?}", a.info.backend, a.info.device_type);
        println!("    driver: {} {}", a.info.driver, a.info.driver_info);
        println!(
            "    limits: max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, \
             max_compute_workgroups_per_dimension {}, max_compute_invocations_per_workgroup {}, \
             max_compute_workgroup_storage_size {} KiB, max_storage_buffers_per_shader_stage {}",
            l.max_storage_buffer_binding_size / (1 << 20),
            l.max_buffer_size / (1 << 20),
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size / 1024,
            l.max_storage_buffers_per_shader_stage,
        );
        let f = a.features;
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "    optional features: timestamp queries {}, f16 {}, subgroups {} (portable fallbacks are used where absent)",
            yes(f.contains(wgpu::Features::TIMESTAMP_QUERY)),
            yes(f.contains(wgpu::Features::SHADER_F16)),
            yes(f.contains(wgpu::Features::SUBGROUP)),
        );
    }
    Ok(())
}
