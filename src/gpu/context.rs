//! Adapter choice and device creation.
//!
//! The device is created with the adapter's own limits (large storage bindings and
//! workgroup counts matter for ResNet-50 activations) and with the optional features
//! that help when present (timestamps, f16, subgroups); every kernel also has a path
//! that needs none of them.

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::kernel::Kernel;
use super::tune::{TuneMode, Tuner};

/// Which kernel family the convolution ops choose from (`--kernels`, env
/// `SPARK_WGPU_KERNELS`). `Auto` takes the family made for the adapter's device type; the
/// others force one, so that the GPU family is exercised end to end on lavapipe (CI) and
/// the CPU family can be compared on a GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelSet {
    /// Choose by the adapter's device type (CPU drivers: `Cpu`, everything else: `Gpu`).
    #[default]
    Auto,
    /// Large register tiles for CPU drivers (lavapipe, SwiftShader, WARP).
    Cpu,
    /// Register tiles sized for GPUs.
    Gpu,
}

impl std::str::FromStr for KernelSet {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "cpu" => Self::Cpu,
            "gpu" => Self::Gpu,
            other => bail!("unknown kernel set {other:?} (--kernels / SPARK_WGPU_KERNELS): expected auto, cpu or gpu"),
        })
    }
}

impl KernelSet {
    /// The name `--kernels` takes (and checkpoints record).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }

    /// `Cpu` or `Gpu`: what `Auto` means on an adapter of `device_type`.
    pub fn resolve(self, device_type: wgpu::DeviceType) -> Self {
        match self {
            Self::Auto if device_type == wgpu::DeviceType::Cpu => Self::Cpu,
            Self::Auto => Self::Gpu,
            other => other,
        }
    }
}

/// Which adapter to use: a name substring and/or a backend, and the kernel family.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    /// Case-insensitive substring of the adapter name (`--adapter`).
    pub name: Option<String>,
    /// `vulkan`, `metal`, `dx12` or `gl` (`--backend`).
    pub backend: Option<String>,
    /// `auto`, `cpu` or `gpu` (`--kernels`).
    pub kernels: Option<String>,
    /// `off`, `cached`, `full` or `cycle` (`--tune`, see [`super::TuneMode`]; unset: `off`).
    pub tune: Option<String>,
}

impl AdapterChoice {
    /// Read `SPARK_WGPU_ADAPTER` and `SPARK_WGPU_BACKEND` (library use without a CLI).
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            name: get("SPARK_WGPU_ADAPTER"),
            backend: get("SPARK_WGPU_BACKEND"),
            kernels: get("SPARK_WGPU_KERNELS"),
            tune: get(super::tune::TUNE_ENV),
        }
    }

    /// Fill unset fields from the environment.
    pub fn or_env(self) -> Self {
        let env = Self::from_env();
        Self {
            name: self.name.or(env.name),
            backend: self.backend.or(env.backend),
            kernels: self.kernels.or(env.kernels),
            tune: self.tune.or(env.tune),
        }
    }

    fn kernel_set(&self) -> Result<KernelSet> {
        self.kernels.as_deref().map_or(Ok(KernelSet::Auto), str::parse)
    }

    fn tune_mode(&self) -> Result<TuneMode> {
        self.tune.as_deref().map_or(Ok(TuneMode::Off), str::parse)
    }

    /// The backends to search (`PRIMARY` when no backend was chosen).
    fn backends(&self) -> Result<wgpu::Backends> {
        Ok(match self.backend.as_deref().map(str::to_ascii_lowercase).as_deref() {
            // Vulkan, Metal, DX12 first; GL only when asked for or when nothing else exists
            // (opening EGL also prints noise on headless machines).
            None => wgpu::Backends::PRIMARY,
            Some("vulkan") | Some("vk") => wgpu::Backends::VULKAN,
            Some("metal") | Some("mtl") => wgpu::Backends::METAL,
            Some("dx12") | Some("d3d12") => wgpu::Backends::DX12,
            Some("gl") | Some("gles") | Some("opengl") => wgpu::Backends::GL,
            Some("all") => wgpu::Backends::all(),
            Some(other) => bail!("unknown --backend {other:?}: expected vulkan, metal, dx12 or gl"),
        })
    }
}

/// Features used when the adapter offers them.
const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SUBGROUP);

const NO_ADAPTER_HELP: &str = "no GPU adapter found. On Linux without a GPU install Mesa's software \
Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`); otherwise install your GPU's \
Vulkan, Metal or DX12 driver. `spark-wgpu devices` lists what wgpu sees.";

/// A device, its queue and what the adapter offers. Holds a per-context pipeline cache.
pub struct GpuContext {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter's name, vendor, driver and backend.
    pub info: wgpu::AdapterInfo,
    /// The limits the device was created with (the adapter's own).
    pub limits: wgpu::Limits,
    /// The features the device was created with.
    pub features: wgpu::Features,
    /// Bytes a graph may allocate, where the adapter says nothing portable about its
    /// memory but it is known: a CPU adapter's host memory available at creation
    /// (`gpu::sizing`). `None`: no bound beyond the limits (a GPU reports out-of-memory as
    /// an error, see `check`).
    pub memory_budget: Option<u64>,
    /// The conv kernel family in use (`Cpu` or `Gpu`, never `Auto`).
    pub kernel_set: KernelSet,
    /// Which variant of the family each tunable node runs (`--tune`).
    pub tuner: Tuner,
    pub(crate) kernels: Mutex<HashMap<(String, String), Arc<Kernel>>>,
    pub(crate) allocated_bytes: AtomicU64,
    /// Errors wgpu reported outside an error scope. wgpu's default handler panics (a
    /// binding over `max_storage_buffer_binding_size`, an out-of-memory buffer), which
    /// would end a run without its checkpoint; here they are kept and turned into an
    /// `Err` by [`GpuContext::check`].
    errors: Arc<Mutex<Vec<wgpu::Error>>>,
    /// `Some` while a graph is only being sized (`gpu::sizing`).
    pub(crate) dry: Mutex<Option<super::sizing::DryRunReport>>,
    /// `Some` while a real build follows its memory plan (`gpu::plan`).
    pub(crate) plan: Mutex<Option<super::plan::Follow>>,
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends &= backends;
    if desc.backends.is_empty() {
        desc.backends = backends;
    }
    wgpu::Instance::new(desc)
}

/// What `spark-wgpu devices` prints for one adapter.
pub struct AdapterReport {
    /// The adapter's name, vendor, driver and backend.
    pub info: wgpu::AdapterInfo,
    /// Its limits.
    pub limits: wgpu::Limits,
    /// Its features.
    pub features: wgpu::Features,
}

/// Every adapter wgpu can see on the chosen backends.
pub fn list_adapters(choice: &AdapterChoice) -> Result<Vec<AdapterReport>> {
    let inst = instance(choice.backends()?);
    let adapters = pollster::block_on(inst.enumerate_adapters(choice.backends()?));
    Ok(adapters
        .into_iter()
        .map(|a| AdapterReport { info: a.get_info(), limits: a.limits(), features: a.features() })
        .collect())
}

impl GpuContext {
    /// Open the adapter chosen by `choice` (unset fields: environment, then the default
    /// high-performance adapter).
    pub fn new(choice: &AdapterChoice) -> Result<Self> {
        let choice = choice.clone().or_env();
        let backends = choice.backends()?;
        let kernel_set = choice.kernel_set()?;
        let inst = instance(backends);
        let adapter = match &choice.name {
            Some(want) => {
                let all = pollster::block_on(inst.enumerate_adapters(backends));
                let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                all.into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want.to_lowercase()))
                    .ok_or_else(|| {
                        if names.is_empty() {
                            anyhow!(NO_ADAPTER_HELP)
                        } else {
                            anyhow!("no adapter name contains {want:?} (--adapter); adapters: {names:?}")
                        }
                    })?
            }
            None => {
                let opts = wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                };
                match pollster::block_on(inst.request_adapter(&opts)) {
                    Ok(a) => a,
                    Err(_) if choice.backend.is_none() => pollster::block_on(instance(wgpu::Backends::GL).request_adapter(&opts))
                        .map_err(|e| anyhow!("{NO_ADAPTER_HELP} ({e})"))?,
                    Err(e) => return Err(anyhow!("{NO_ADAPTER_HELP} ({e})")),
                }
            }
        };
        Self::open(adapter, kernel_set, choice.tune_mode()?)
    }

    /// Open the adapter of the MPI rank with node-local rank `local_rank` (issue 10): the
    /// `local_rank`-th of the adapters `choice` matches (by name when `--adapter` is given;
    /// otherwise every non-CPU adapter of the first backend listed, or the CPU ones when
    /// there is no other). With `share`, every rank takes the first (one adapter, e.g.
    /// lavapipe, shared by all ranks of a node).
    pub fn new_for_rank(choice: &AdapterChoice, local_rank: usize, share: bool) -> Result<Self> {
        let choice = choice.clone().or_env();
        let backends = choice.backends()?;
        let kernel_set = choice.kernel_set()?;
        let mut all = pollster::block_on(instance(backends).enumerate_adapters(backends));
        match &choice.name {
            Some(want) => all.retain(|a| a.get_info().name.to_lowercase().contains(&want.to_lowercase())),
            None => {
                if all.iter().any(|a| a.get_info().device_type != wgpu::DeviceType::Cpu) {
                    all.retain(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
                }
                // The same GPU is listed once per backend (Vulkan and DX12 on Windows).
                if let (None, Some(first)) = (&choice.backend, all.first().map(|a| a.get_info().backend)) {
                    all.retain(|a| a.get_info().backend == first);
                }
            }
        }
        let i = crate::dist::pick_adapter(local_rank, all.len(), share)?;
        // Ranks timing their candidates on their own could choose different kernels (and
        // a weight-gradient choice is a summation order): one rule for every rank.
        let tune = choice.tune_mode()?;
        if tune.times() && local_rank == 0 {
            eprintln!("note: kernel tuning (--tune {}) is off under MPI: every rank runs the family's fixed rule", choice.tune.as_deref().unwrap_or(""));
        }
        Self::open(all.swap_remove(i), kernel_set, if tune == TuneMode::Cycle { tune } else { TuneMode::Off })
    }

    fn open(adapter: wgpu::Adapter, kernel_set: KernelSet, tune: TuneMode) -> Result<Self> {
        let info = adapter.get_info();
        let kernel_set = kernel_set.resolve(info.device_type);
        let tuner = Tuner::new(
            tune,
            format!("{} | {:?} | {} {} | {} kernels", info.name, info.backend, info.driver, info.driver_info, kernel_set.name()),
        );
        let limits = adapter.limits();
        let features = adapter.features() & OPTIONAL_FEATURES;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("spark-wgpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .with_context(|| format!("creating a device on adapter {:?}", info.name))?;
        let errors: Arc<Mutex<Vec<wgpu::Error>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e);
            }
        }));
        let memory_budget =
            (info.device_type == wgpu::DeviceType::Cpu).then(super::sizing::host_memory_available).flatten();
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            memory_budget,
            kernel_set,
            tuner,
            kernels: Mutex::new(HashMap::new()),
            allocated_bytes: AtomicU64::new(0),
            errors,
            dry: Mutex::new(None),
            plan: Mutex::new(None),
        })
    }

    /// The default adapter (environment variables respected).
    pub fn new_default() -> Result<Self> {
        Self::new(&AdapterChoice::default())
    }

    /// One line naming the adapter: "llvmpipe (LLVM 15.0.7, 256 bits) (Vulkan, Cpu, driver ...)".
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, {} {}, {:?} kernels)",
            self.info.name, self.info.backend, self.info.device_type, self.info.driver, self.info.driver_info, self.kernel_set
        )
    }

    /// Bytes of every buffer created through this context so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes.load(Ordering::Relaxed)
    }

    /// `Err` naming `what` (the op or phase just recorded or run) if wgpu reported an
    /// error since the last check: out of memory, a validation error, device loss.
    pub fn check(&self, what: &str) -> Result<()> {
        let errs = std::mem::take(&mut *self.errors.lock().map_err(|_| anyhow!("GPU error list poisoned"))?);
        let Some(first) = errs.first() else { return Ok(()) };
        let more = if errs.len() > 1 { format!(" (and {} more errors)", errs.len() - 1) } else { String::new() };
        let hint = match first {
            wgpu::Error::OutOfMemory { .. } => {
                " — the GPU is out of memory: try a smaller --batch, --input-size or --dec-width"
            }
            _ => "",
        };
        bail!("{what}: the GPU ({}) reported: {first}{more}{hint}", self.info.name)
    }

    /// Drop the errors wgpu reported so far (a dry run's placeholders raise some).
    pub(crate) fn discard_errors(&self) {
        if let Ok(mut v) = self.errors.lock() {
            v.clear();
        }
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wgpu_error_becomes_an_err_not_a_panic() {
        let ctx = GpuContext::new_default().unwrap();
        ctx.check("nothing yet").unwrap();
        // A buffer over the adapter's limit is a validation error (wgpu's default handler
        // would panic here).
        let _b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("too large"),
            size: ctx.limits.max_buffer_size.saturating_add(4),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let e = ctx.check("allocating a test buffer").unwrap_err().to_string();
        assert!(e.contains("allocating a test buffer") && e.contains("reported"), "{e}");
        // Reported once.
        ctx.check("after").unwrap();
    }
}
