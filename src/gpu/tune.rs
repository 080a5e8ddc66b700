//! Kernel choice by measurement (`--tune`, env `SPARK_WGPU_TUNE`): the store of which
//! variant each tunable node of a graph runs, keyed by its problem, filled by timing the
//! candidates once when the graph is built and cached on disk per adapter, driver and
//! kernel-family version. The candidates and what a key means belong to the ops
//! (`ops::conv::tune`); this module only decides, remembers and persists.
//!
//! A choice can change a summation order (a weight-gradient tile fixes its split-K
//! count), so the choices of a run are recorded in its run directory and replayed on
//! `--resume` ([`Tuner::replay`]): a resumed run takes the kernels it started with,
//! whatever the cache or the timing says now.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Version of the tunable kernel families: bump it when a variant's meaning or a key's
/// format changes, so that cached choices of another version are ignored.
pub const TUNE_VERSION: u32 = 1;

/// Environment variable of the mode (library use; the CLI's `--tune` wins).
pub const TUNE_ENV: &str = "SPARK_WGPU_TUNE";
/// Environment variable overriding the cache directory (default: the user's cache
/// directory, `$XDG_CACHE_HOME/spark-wgpu` or `~/.cache/spark-wgpu` on Linux).
pub const CACHE_DIR_ENV: &str = "SPARK_WGPU_CACHE_DIR";

/// How tunable nodes pick their variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TuneMode {
    /// The fixed rule of the kernel family (no timing, no cache): the library default.
    #[default]
    Off,
    /// Cached choices where this adapter has them; the rest timed once and cached
    /// (the CLI default).
    Cached,
    /// Every node timed again, the cache rewritten.
    Full,
    /// Testing: the tunable nodes take their candidates in turn (the n-th new key its
    /// `n mod len`-th), so one run exercises every variant of the table end to end.
    Cycle,
}

impl std::str::FromStr for TuneMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "cached" => Self::Cached,
            "full" => Self::Full,
            "cycle" => Self::Cycle,
            other => bail!("unknown tune mode {other:?} (--tune / {TUNE_ENV}): expected off, cached, full or cycle"),
        })
    }
}

impl TuneMode {
    /// The name `--tune` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Cached => "cached",
            Self::Full => "full",
            Self::Cycle => "cycle",
        }
    }

    /// Whether choosing may run candidates (the graph then fills its maps first).
    pub fn times(self) -> bool {
        matches!(self, Self::Cached | Self::Full)
    }
}

/// What the tuner did for a graph: for the run's log and the bench report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TuneReport {
    /// Keys decided by timing.
    pub timed: usize,
    /// Keys taken from the disk cache.
    pub cached: usize,
    /// Keys replayed from a run's record.
    pub replayed: usize,
    /// Wall time spent timing candidates (pipeline compilation included).
    pub spent: Duration,
}

#[derive(Default)]
struct State {
    /// This context's choices (key -> variant), in key order.
    chosen: BTreeMap<String, String>,
    /// A run's recorded choices, authoritative where present.
    replay: Option<BTreeMap<String, String>>,
    /// This adapter's cached choices (loaded on first use).
    cache: Option<BTreeMap<String, String>>,
    dirty: bool,
    report: TuneReport,
    cycle: usize,
    /// Tuning jobs queued by dry runs (see [`Tuner::defer`]).
    pending: Vec<(String, Box<dyn FnOnce(&super::GpuContext) -> Result<()> + Send>)>,
}

/// The choice store of one GPU context (see the module documentation).
pub struct Tuner {
    mode: TuneMode,
    /// Adapter, driver, backend, kernel family and `TUNE_VERSION`: the cache's section.
    device: String,
    cache_file: Option<PathBuf>,
    state: Mutex<State>,
}

/// How much faster than the fixed rule's choice another candidate must run to be chosen.
const MARGIN: f64 = 0.1;
/// Timing rounds per key after the warm-up: at least 1, more while under `ROUND_BUDGET`
/// (a slow layer is run twice per candidate: at 224² batch 8 on lavapipe, its largest
/// layers take a second or more per pass).
const MAX_ROUNDS: usize = 5;
const ROUND_BUDGET: Duration = Duration::from_millis(250);

/// Each candidate's fastest run (seconds, `time(c)` is one run): a warm-up run of each
/// (pipeline compilation, first touch of buffers), then rounds that run every candidate
/// once, interleaved so that a slow spell of a shared machine hits them alike; the
/// minimum counts (other processes only ever add time).
pub fn time_rounds(candidates: &[&str], time: &mut dyn FnMut(&str) -> Result<f64>) -> Result<Vec<f64>> {
    for c in candidates {
        time(c)?;
    }
    let start = Instant::now();
    let mut best = vec![f64::INFINITY; candidates.len()];
    for _ in 0..MAX_ROUNDS {
        for (b, c) in best.iter_mut().zip(candidates) {
            *b = b.min(time(c)?);
        }
        if start.elapsed() >= ROUND_BUDGET {
            break;
        }
    }
    Ok(best)
}

impl Tuner {
    /// A tuner in `mode` for the adapter described by `device` (its cache section).
    pub fn new(mode: TuneMode, device: String) -> Self {
        let cache_file = std::env::var_os(CACHE_DIR_ENV)
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("spark-wgpu")))
            .map(|d| d.join("kernels.json"));
        Self { mode, device: format!("{device} | v{TUNE_VERSION}"), cache_file, state: Mutex::new(State::default()) }
    }

    /// The mode in use.
    pub fn mode(&self) -> TuneMode {
        self.mode
    }

    /// Whether a choice not made yet may run candidates (see [`TuneMode::times`]).
    pub fn may_time(&self) -> bool {
        self.mode.times()
    }

    /// The variant for `key` among `candidates` without timing (`fixed`: the family's
    /// rule, one of them): a choice made or replayed, a cached one (`cached` mode), the
    /// turn of `cycle`, else `fixed`. With `provisional` (a dry run, before the pending
    /// tunings ran) an answer that timing may still change is not kept.
    pub fn lookup<'a>(&self, key: &str, candidates: &[&'a str], fixed: &'a str, provisional: bool) -> Result<&'a str> {
        self.pick(key, candidates, fixed, None, provisional)
    }

    /// The variant for `key` among `candidates`, timing each with `time` (seconds) where
    /// nothing decides it yet (see [`Tuner::lookup`]).
    pub fn decide<'a>(&self, key: &str, candidates: &[&'a str], fixed: &'a str, time: &mut dyn FnMut(&str) -> Result<f64>) -> Result<&'a str> {
        self.pick(key, candidates, fixed, Some(time), false)
    }

    /// Whether `key` still waits for timing (not decided, replayed or cached).
    pub fn undecided(&self, key: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        if !self.mode.times() || st.chosen.contains_key(key) || st.replay.is_some() {
            return false;
        }
        !(self.mode == TuneMode::Cached && self.cache_section(&mut st).contains_key(key))
    }

    fn pick<'a>(
        &self,
        key: &str,
        candidates: &[&'a str],
        fixed: &'a str,
        time: Option<&mut dyn FnMut(&str) -> Result<f64>>,
        provisional: bool,
    ) -> Result<&'a str> {
        debug_assert!(candidates.contains(&fixed), "{key}: the fixed choice {fixed} is not a candidate");
        let find = |name: &str| candidates.iter().copied().find(|c| *c == name);
        let mut st = self.state.lock().unwrap();
        if let Some(c) = st.chosen.get(key) {
            return find(c).with_context(|| format!("tuner: {key} was decided as {c}, not a candidate now"));
        }
        let choice = if let Some(rec) = st.replay.as_ref().map(|r| r.get(key).cloned()) {
            match rec {
                Some(c) => {
                    st.report.replayed += 1;
                    find(&c).with_context(|| format!("the run's recorded kernel {c} for {key} is not among this build's candidates {candidates:?}"))?
                }
                // A node the record does not name ran the fixed rule.
                None => fixed,
            }
        } else if candidates.len() == 1 || self.mode == TuneMode::Off {
            fixed
        } else if self.mode == TuneMode::Cycle {
            st.cycle += 1;
            candidates[(st.cycle - 1) % candidates.len()]
        } else if let Some(c) = (self.mode == TuneMode::Cached).then(|| self.cache_section(&mut st).get(key).and_then(|c| find(c))).flatten() {
            st.report.cached += 1;
            c
        } else if let Some(time) = time {
            drop(st);
            let start = Instant::now();
            let best = time_rounds(candidates, time).with_context(|| format!("timing the candidates of {key}"))?;
            let fixed_at = candidates.iter().position(|c| *c == fixed).unwrap_or(0);
            let fastest = (0..candidates.len()).fold(fixed_at, |b, i| if best[i] < best[b] { i } else { b });
            // Another variant must beat the fixed rule's by more than the noise of a shared
            // machine (measured: 10-20 % between an isolated run and the same kernel inside
            // the step on lavapipe, so 5 % alone would be too little; the rounds are
            // interleaved so that drift hits every candidate alike).
            let pick = if best[fastest] < best[fixed_at] * (1.0 - MARGIN) { candidates[fastest] } else { fixed };
            st = self.state.lock().unwrap();
            st.report.timed += 1;
            st.report.spent += start.elapsed();
            self.cache_section(&mut st).insert(key.to_string(), pick.to_string());
            st.dirty = true;
            pick
        } else if provisional {
            return Ok(fixed);
        } else {
            fixed
        };
        st.chosen.insert(key.to_string(), choice.to_string());
        Ok(choice)
    }

    /// Queue a tuning job (a closure that calls [`Tuner::decide`] on a problem of its
    /// own) for when the graph's sizing is done: dry runs only record what to time, so
    /// that a batch the adapter cannot hold is refused before anything is allocated.
    pub fn defer(&self, key: &str, job: Box<dyn FnOnce(&super::GpuContext) -> Result<()> + Send>) {
        let mut st = self.state.lock().unwrap();
        if !st.pending.iter().any(|(k, _)| k == key) {
            st.pending.push((key.to_string(), job));
        }
    }

    /// Drop the queued jobs (a new build starts).
    pub fn clear_pending(&self) {
        self.state.lock().unwrap().pending.clear();
    }

    /// Run the queued jobs; returns whether any choice was made (the sizing, which used
    /// the fixed rule for those nodes, must then be redone). Saves the cache.
    pub fn run_pending(&self, ctx: &super::GpuContext) -> Result<bool> {
        let jobs = std::mem::take(&mut self.state.lock().unwrap().pending);
        let any = !jobs.is_empty();
        for (_, job) in jobs {
            job(ctx)?;
        }
        self.save_cache();
        Ok(any)
    }

    fn cache_section<'s>(&self, st: &'s mut State) -> &'s mut BTreeMap<String, String> {
        st.cache.get_or_insert_with(|| self.read_cache().remove(&self.device).unwrap_or_default())
    }

    /// The whole cache file (every adapter's section); empty when absent or unreadable
    /// (a cache is an optimisation: a corrupt one is reported and rebuilt, never fatal).
    fn read_cache(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let Some(f) = &self.cache_file else { return BTreeMap::new() };
        match std::fs::read(f) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!("warning: ignoring the kernel cache {}: {e}", f.display());
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Write this adapter's new choices into the cache file (merged with what other
    /// processes wrote meanwhile; temporary file + rename). A failure is a warning.
    pub fn save_cache(&self) {
        let mut st = self.state.lock().unwrap();
        let (Some(f), true) = (&self.cache_file, st.dirty) else { return };
        let mut all = self.read_cache();
        let section = all.entry(self.device.clone()).or_default();
        section.extend(st.cache.clone().unwrap_or_default());
        let res = (|| -> Result<()> {
            if let Some(d) = f.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = f.with_extension(format!("json.{}.tmp", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec_pretty(&all)?)?;
            std::fs::rename(&tmp, f)?;
            Ok(())
        })();
        match res {
            Ok(()) => st.dirty = false,
            Err(e) => eprintln!("warning: could not write the kernel cache {}: {e}", f.display()),
        }
    }

    /// The cache file in use (`None`: no cache directory).
    pub fn cache_file(&self) -> Option<&Path> {
        self.cache_file.as_deref()
    }

    /// Every choice made so far (key -> variant).
    pub fn choices(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().chosen.clone()
    }

    /// Replay a run's recorded choices: keys in `rec` take its variant, keys absent from
    /// it the fixed rule; nothing is timed. Call before building the run's graph.
    pub fn replay(&self, rec: BTreeMap<String, String>) {
        let mut st = self.state.lock().unwrap();
        st.chosen.clear();
        st.replay = Some(rec);
    }

    /// One line on what the tuner did (`None` when it chose nothing by measurement or
    /// record): for the run's log and `bench`.
    pub fn summary(&self) -> Option<String> {
        let r = self.report();
        if r.timed + r.cached + r.replayed == 0 && self.mode != TuneMode::Cycle {
            return None;
        }
        let cache = self.cache_file.as_ref().map_or(String::new(), |f| format!(" (cache {})", f.display()));
        Some(format!(
            "conv kernels (--tune {}): {} layer passes timed in {:.1} s, {} from the cache, {} replayed from the run{cache}",
            self.mode.name(),
            r.timed,
            r.spent.as_secs_f64(),
            r.cached,
            r.replayed
        ))
    }

    /// What the tuner did so far.
    pub fn report(&self) -> TuneReport {
        self.state.lock().unwrap().report.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuner(mode: TuneMode, dir: &Path) -> Tuner {
        let mut t = Tuner::new(mode, "test adapter".into());
        t.cache_file = Some(dir.join("kernels.json"));
        t
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spark-tune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const C: [&str; 3] = ["a", "b", "c"];

    /// Timing keeps the fastest, by more than noise; ties keep the fixed rule's choice.
    #[test]
    fn timing_keeps_the_fastest_and_caches_it() {
        let d = dir("fastest");
        let t = tuner(TuneMode::Cached, &d);
        let times = |c: &str| Ok(match c { "a" => 1.0, "b" => 0.5, _ => 0.495 });
        assert_eq!(t.decide("k1", &C, "a", &mut |c| times(c)).unwrap(), "c");
        assert_eq!(t.decide("k3", &C, "a", &mut |c| Ok(if c == "b" { 0.95 } else { 1.0 })).unwrap(), "a", "5 % is noise");
        assert_eq!(t.decide("k2", &C, "a", &mut |_| Ok(1.0)).unwrap(), "a");
        // decided keys are not timed again
        assert_eq!(t.decide("k1", &C, "a", &mut |_| panic!("timed twice")).unwrap(), "c");
        assert_eq!(t.report().timed, 3);
        t.save_cache();
        // a new tuner (process) reads them back without timing
        let t2 = tuner(TuneMode::Cached, &d);
        assert!(!t2.undecided("k1"));
        assert_eq!(t2.decide("k1", &C, "a", &mut |_| panic!("cached")).unwrap(), "c");
        assert_eq!(t2.report().cached, 1);
        // full re-times; another adapter's section is separate
        let t3 = tuner(TuneMode::Full, &d);
        assert_eq!(t3.decide("k1", &C, "a", &mut |c| Ok(if c == "c" { 0.1 } else { 1.0 })).unwrap(), "c");
        let mut other = Tuner::new(TuneMode::Cached, "other adapter".into());
        other.cache_file = t.cache_file.clone();
        assert!(other.undecided("k1"));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// off: the fixed rule; cycle: the candidates in turn; a dry run's lookup of an
    /// undecided key is not kept.
    #[test]
    fn off_cycle_and_provisional_lookups() {
        let d = dir("modes");
        let t = tuner(TuneMode::Off, &d);
        assert_eq!(t.decide("k", &C, "b", &mut |_| panic!("off times nothing")).unwrap(), "b");
        let t = tuner(TuneMode::Cycle, &d);
        let got: Vec<_> = (0..4).map(|i| t.lookup(&format!("k{i}"), &C, "a", true).unwrap()).collect();
        assert_eq!(got, ["a", "b", "c", "a"]);
        assert_eq!(t.lookup("k1", &C, "a", false).unwrap(), "b", "a key keeps its turn");
        let t = tuner(TuneMode::Cached, &d);
        assert_eq!(t.lookup("k", &C, "a", true).unwrap(), "a");
        assert!(t.choices().is_empty() && t.undecided("k"), "a provisional answer is not a choice");
        assert_eq!(t.lookup("k", &C, "a", false).unwrap(), "a");
        assert_eq!(t.choices().get("k").map(String::as_str), Some("a"));
        assert!(!d.exists(), "nothing timed, nothing written");
    }

    /// A run's record wins over the cache and timing; a recorded kernel that is not a
    /// candidate any more is an error naming it; keys the record lacks take the fixed rule.
    #[test]
    fn replay_wins_and_names_a_missing_kernel() {
        let d = dir("replay");
        let t = tuner(TuneMode::Full, &d);
        t.replay([("k".to_string(), "c".to_string()), ("gone".to_string(), "z".to_string())].into());
        assert_eq!(t.decide("k", &C, "a", &mut |_| panic!("replayed")).unwrap(), "c");
        assert_eq!(t.decide("new", &C, "a", &mut |_| panic!("replayed")).unwrap(), "a");
        let e = t.decide("gone", &C, "a", &mut |_| Ok(1.0)).unwrap_err().to_string();
        assert!(e.contains("z") && e.contains("gone"), "{e}");
    }

    /// A corrupt cache file is ignored (with a warning) and rewritten.
    #[test]
    fn corrupt_cache_is_ignored_and_rewritten() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("kernels.json"), b"{ not json").unwrap();
        let t = tuner(TuneMode::Cached, &d);
        assert_eq!(t.decide("k", &C, "a", &mut |c| Ok(if c == "b" { 0.1 } else { 1.0 })).unwrap(), "b");
        t.save_cache();
        let t2 = tuner(TuneMode::Cached, &d);
        assert_eq!(t2.decide("k", &C, "a", &mut |_| panic!("cached")).unwrap(), "b");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn modes_parse_and_reject_unknown() {
        for m in [TuneMode::Off, TuneMode::Cached, TuneMode::Full, TuneMode::Cycle] {
            assert_eq!(m.name().parse::<TuneMode>().unwrap(), m);
        }
        let e = "fast".parse::<TuneMode>().unwrap_err().to_string();
        assert!(e.contains("--tune") && e.contains("fast"), "{e}");
    }
}
