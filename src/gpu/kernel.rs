//! Kernels (one compute pipeline per WGSL entry point) and recorded dispatches.
//!
//! The bind-group layout is reflected from the WGSL with naga rather than taken from
//! wgpu's automatic layout: the automatic layout drops bindings that an entry point
//! does not use, so files with several entry points would need per-entry buffer lists.
//! Convention: group 0; a `var<uniform>` (if any) is the parameter block; every
//! storage binding is passed, in ascending binding order, as a `GpuTensor`. The
//! uniform's WGSL struct size is reflected too: every dispatch checks it against
//! `size_of` of the Rust `Params` it is given, so a field added on one side only is a
//! clear error naming the kernel instead of silently shifted parameters.

use anyhow::{Result, anyhow};
use std::sync::Arc;
use wgpu::util::DeviceExt;

use super::{GpuContext, GpuTensor, shader_source};

/// How one binding of group 0 is declared in WGSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>` or `var<storage, read_write>`.
    Storage {
        /// Declared `read`.
        read_only: bool,
    },
}

/// A compiled entry point with its reflected bindings.
pub struct Kernel {
    /// Shader name and entry point.
    pub name: String,
    /// The compiled pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Layout of its group-0 bindings.
    pub layout: wgpu::BindGroupLayout,
    /// (binding index, kind), ascending.
    pub bindings: Vec<(u32, BindingKind)>,
    /// `@workgroup_size` of the entry point.
    pub workgroup_size: [u32; 3],
    /// Bytes of the uniform's WGSL type (None: no uniform).
    pub uniform_size: Option<u32>,
}

impl Kernel {
    /// Whether `P` (the Rust parameter block) has the size of the WGSL uniform; kernels
    /// without a uniform take any `P` (it is ignored).
    pub fn check_params<P>(&self) -> Result<()> {
        check_uniform_size::<P>(&self.name, self.uniform_size)
    }
}

fn check_uniform_size<P>(kernel: &str, uniform_size: Option<u32>) -> Result<()> {
    let rust = std::mem::size_of::<P>();
    match uniform_size {
        Some(wgsl) if wgsl as usize != rust => Err(anyhow!(
            "{kernel}: the WGSL uniform is {wgsl} bytes but the Rust parameter block {} is {rust} bytes: \
             their fields differ",
            std::any::type_name::<P>()
        )),
        _ => Ok(()),
    }
}

/// An entry point's group-0 bindings, workgroup size and uniform size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reflection {
    /// (binding index, kind), ascending.
    pub bindings: Vec<(u32, BindingKind)>,
    pub workgroup_size: [u32; 3],
    /// Bytes of the `var<uniform>`'s type (None: the module has none).
    pub uniform_size: Option<u32>,
}

/// Bindings of group 0, the workgroup size of `entry` and the uniform's size, read from
/// the WGSL source.
pub fn reflect(source: &str, entry: &str) -> Result<Reflection> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| anyhow!("{}", e.emit_to_string(source)))?;
    let mut bindings = vec![];
    let mut uniform_size = None;
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if rb.group != 0 {
            return Err(anyhow!("only bind group 0 is supported (found group {})", rb.group));
        }
        let kind = match var.space {
            naga::AddressSpace::Uniform => {
                if uniform_size.is_some() {
                    return Err(anyhow!("more than one var<uniform> (the convention is one parameter block)"));
                }
                uniform_size = Some(module.types[var.ty].inner.size(module.to_ctx()));
                BindingKind::Uniform
            }
            naga::AddressSpace::Storage { access } => {
                BindingKind::Storage { read_only: !access.contains(naga::StorageAccess::STORE) }
            }
            other => return Err(anyhow!("unsupported address space {other:?}")),
        };
        bindings.push((rb.binding, kind));
    }
    bindings.sort_by_key(|b| b.0);
    let ep = module
        .entry_points
        .iter()
        .find(|e| e.name == entry)
        .ok_or_else(|| anyhow!("no entry point {entry:?}"))?;
    Ok(Reflection { bindings, workgroup_size: ep.workgroup_size, uniform_size })
}

impl GpuContext {
    /// The kernel `entry` of `shaders/<file>.wgsl` (compiled once per context).
    pub fn kernel_entry(&self, file: &str, entry: &str) -> Result<Arc<Kernel>> {
        let key = (file.to_string(), entry.to_string());
        if let Some(k) = self.kernels.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        let source = shader_source(file).ok_or_else(|| anyhow!("no shader shaders/{file}.wgsl"))?;
        let Reflection { bindings, workgroup_size, uniform_size } =
            reflect(source, entry).map_err(|e| anyhow!("shaders/{file}.wgsl: {e}"))?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match kind {
                        BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                        BindingKind::Storage { read_only } => wgpu::BufferBindingType::Storage { read_only },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let label = format!("{file}::{entry}");
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&label),
            entries: &entries,
        });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let k = Arc::new(Kernel { name: label, pipeline, layout, bindings, workgroup_size, uniform_size });
        self.kernels.lock().unwrap().insert(key, k.clone());
        Ok(k)
    }

    /// The kernel `main` of `shaders/<file>.wgsl`.
    pub fn kernel(&self, file: &str) -> Result<Arc<Kernel>> {
        self.kernel_entry(file, "main")
    }

    /// Workgroup counts covering `n` workgroups within `max_compute_workgroups_per_dimension`:
    /// (n,1,1) when it fits, else split over y. Kernels index with
    /// `gid.x + gid.y * nwg.x * WG_X` and bounds-check against their element count.
    pub fn grid_for(&self, n: u64) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        let n = n.max(1);
        if n <= max {
            [n as u32, 1, 1]
        } else {
            let y = n.div_ceil(max);
            assert!(y <= max, "dispatch of {n} workgroups exceeds the adapter's grid");
            [max as u32, y as u32, 1]
        }
    }

    /// Record `kernel` over `invocations` threads along x (split per the adapter limits).
    /// `params` fills the uniform binding (ignored when the kernel has none); `tensors`
    /// fill the storage bindings in ascending order.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Arc<Kernel>,
        params: &P,
        tensors: &[&GpuTensor],
        invocations: u64,
    ) -> Dispatch {
        let groups = self.grid_for(invocations.div_ceil(kernel.workgroup_size[0] as u64));
        self.dispatch_groups(kernel, params, tensors, groups)
    }

    /// Record `kernel` with an explicit workgroup grid.
    pub fn dispatch_groups<P: bytemuck::Pod>(
        &self,
        kernel: &Arc<Kernel>,
        params: &P,
        tensors: &[&GpuTensor],
        groups: [u32; 3],
    ) -> Dispatch {
        // A mismatch is a bug in the launcher or the kernel, caught by any test that runs
        // the kernel (like the storage binding count below).
        if let Err(e) = kernel.check_params::<P>() {
            panic!("{e}");
        }
        let mut bytes = bytemuck::bytes_of(params).to_vec();
        bytes.resize(bytes.len().next_multiple_of(16).max(16), 0);
        let uniform = kernel.bindings.iter().any(|b| b.1 == BindingKind::Uniform).then(|| {
            self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
        });
        let storage: Vec<_> = kernel.bindings.iter().filter(|b| b.1 != BindingKind::Uniform).collect();
        assert_eq!(
            storage.len(),
            tensors.len(),
            "{}: {} storage bindings, {} tensors given",
            kernel.name,
            storage.len(),
            tensors.len()
        );
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        let dry = self.is_dry_run();
        let mut entries = vec![];
        let mut touches = vec![];
        let mut it = tensors.iter();
        for &(binding, kind) in &kernel.bindings {
            let resource = match kind {
                BindingKind::Uniform => uniform.as_ref().unwrap().as_entire_binding(),
                BindingKind::Storage { read_only } => {
                    let t = it.next().unwrap();
                    assert!(t.offset.is_multiple_of(align), "{}: binding {binding} offset {} not aligned to {align}", kernel.name, t.offset);
                    if dry {
                        // Record the view; bind the placeholder's first 16 bytes instead.
                        self.with_dry(|d| d.binding(&format!("{} (binding {binding})", kernel.name), t.bytes()));
                        touches.push((Arc::as_ptr(&t.buffer) as usize, !read_only));
                        t.buffer.as_entire_binding()
                    } else {
                        t.binding()
                    }
                }
            };
            entries.push(wgpu::BindGroupEntry { binding, resource });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.name),
            layout: &kernel.layout,
            entries: &entries,
        });
        Dispatch { kernel: kernel.clone(), bind_group, groups, flops: 0, label: String::new(), touches }
    }

    /// Encode `dispatches` in order into one compute pass and submit (no wait).
    /// wgpu inserts the barriers between dispatches that touch the same buffer.
    pub fn submit<'a>(&self, dispatches: impl IntoIterator<Item = &'a Dispatch>) {
        let mut enc = self.device.create_command_encoder(&Default::default());
        Dispatch::encode_all(dispatches, &mut enc);
        self.queue.submit([enc.finish()]);
    }

    /// Submit and wait (tests, one-off work).
    pub fn run<'a>(&self, dispatches: impl IntoIterator<Item = &'a Dispatch>) -> Result<()> {
        self.submit(dispatches);
        self.wait()
    }
}

/// One recorded kernel launch: pipeline, bind group (buffers fixed at build time) and
/// grid. Replaying a list of these is a training step.
pub struct Dispatch {
    /// The kernel launched.
    pub kernel: Arc<Kernel>,
    /// Its buffers, bound once at build time.
    pub bind_group: wgpu::BindGroup,
    /// Workgroups in x, y, z.
    pub groups: [u32; 3],
    /// Floating-point operations of this launch when known (for GFLOP/s reports).
    pub flops: u64,
    /// What the launch computes in the model (e.g. the parameter's name), for profiles.
    pub label: String,
    /// Dry runs only: the buffers it binds (by address) and whether it writes each, for
    /// the memory plan (`gpu::plan`).
    pub(crate) touches: Vec<(usize, bool)>,
}

impl Dispatch {
    /// Record this launch into `pass`.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups[0], self.groups[1], self.groups[2]);
    }

    /// Record `dispatches` in order into one compute pass of `enc`: the one encoding path
    /// of every step (forward, backward, optimizer) and of the benchmark's timings.
    pub fn encode_all<'a>(dispatches: impl IntoIterator<Item = &'a Dispatch>, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        for d in dispatches {
            d.encode(&mut pass);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "struct Params { a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) { y[gid.x] = f32(p.a + p.b + p.c); }
";

    #[test]
    fn reflects_uniform_size() {
        let r = reflect(SRC, "main").unwrap();
        assert_eq!(r.uniform_size, Some(12));
        assert_eq!(r.workgroup_size, [8, 1, 1]);
        assert_eq!(r.bindings, vec![(0, BindingKind::Uniform), (1, BindingKind::Storage { read_only: false })]);
        let none = reflect("@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n@compute @workgroup_size(1) fn main() { y[0] = 1.0; }", "main").unwrap();
        assert_eq!(none.uniform_size, None);
    }

    #[test]
    fn params_size_mismatch_is_a_clear_error() {
        let size = reflect(SRC, "main").unwrap().uniform_size;
        assert!(check_uniform_size::<[u32; 3]>("k::main", size).is_ok());
        let e = check_uniform_size::<[u32; 4]>("k::main", size).unwrap_err().to_string();
        assert!(e.contains("k::main") && e.contains("12 bytes") && e.contains("16 bytes") && e.contains("[u32; 4]"), "{e}");
        // No uniform: whatever is passed is ignored.
        assert!(check_uniform_size::<[u32; 4]>("k::main", None).is_ok());
    }

    /// A built pipeline carries the size: `fill`'s Params is { count: u32, value: f32 }.
    #[test]
    fn built_kernel_checks_params() {
        let ctx = GpuContext::new_default().unwrap();
        let k = ctx.kernel("fill").unwrap();
        assert_eq!(k.uniform_size, Some(8));
        assert!(k.check_params::<[u32; 2]>().is_ok());
        let e = k.check_params::<[u32; 3]>().unwrap_err().to_string();
        assert!(e.contains("fill::main") && e.contains("8 bytes") && e.contains("12 bytes"), "{e}");
    }
}
