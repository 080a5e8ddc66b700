//! Official PyTorch checkpoints (`torch.save` zip archives) read without Python.
//!
//! A `.pth` is a zip holding `<dir>/data.pkl` (a pickle of the object graph) and one entry
//! `<dir>/data/<key>` per tensor storage. Pickle is a program for a stack machine that may
//! call any importable Python function, so this is a RESTRICTED unpickler: it interprets the
//! opcodes torch emits and resolves `GLOBAL`s only against an allow-list of the functions
//! and classes that rebuild tensors and plain containers. Those are never "called": each
//! is matched to a native Rust constructor. Any other global is refused by name before
//! anything else happens, so a malicious file can only fail to load.

use super::tensors::{HostData, HostTensor, TensorMap};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;
use zip::ZipArchive;

/// A loaded pickle value. Tensors are materialised row-major whatever their strides.
#[derive(Clone, Debug, PartialEq)]
pub enum PickleValue {
    /// Python `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (up to 64 bits).
    Int(i64),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `list`.
    List(Vec<PickleValue>),
    /// `tuple`.
    Tuple(Vec<PickleValue>),
    /// Dicts and `OrderedDict`s, in insertion order.
    Dict(Vec<(PickleValue, PickleValue)>),
    /// A `torch.Tensor` (its storage read from the archive).
    Tensor(HostTensor),
    /// An instance of an allow-listed non-container class (`torch.device`,
    /// `argparse.Namespace`: constructor `args` and `BUILD` `state`), or a bare reference to
    /// an allow-listed global (`args` empty, `state` None).
    Object {
        /// `module.Name` of the class or global.
        class: String,
        /// Constructor arguments (`NEWOBJ`/`REDUCE`).
        args: Vec<PickleValue>,
        /// The `BUILD` state, if any.
        state: Option<Box<PickleValue>>,
    },
}

impl PickleValue {
    /// The value under string key `key` of a dict (None for other values or a missing key).
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        match self {
            PickleValue::Dict(items) => items.iter().find(|(k, _)| matches!(k, PickleValue::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PickleValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            PickleValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The tensor, if this is a tensor.
    pub fn as_tensor(&self) -> Option<&HostTensor> {
        match self {
            PickleValue::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

/// What an official checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointStyle {
    /// `*_withdecoder_1kpretrained_spark_style.pth`: the whole SparK model under SparK names
    /// (`sparse_encoder.sp_cnn.…`, `densify_*`, `mask_tokens.I`, `dense_decoder.…`).
    SparkFull,
    /// `*_1kpretrained_timm_style.pth`: the bare encoder under timm/official names.
    EncoderOnly,
}

/// Element types of torch storages (from the `torch.*Storage` class in the persistent id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::BF16 | Elem::I16 => 2,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }
}

/// The allow-list. Everything a torch state dict / SparK checkpoint needs, nothing that
/// could run code or touch the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(Elem),
    Device,
    Namespace,
    /// `_codecs.encode(str, 'latin1')`: how protocol 2 pickles Python `bytes`.
    CodecsEncode,
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch", "device") => Global::Device,
            ("argparse", "Namespace") => Global::Namespace,
            ("_codecs", "encode") => Global::CodecsEncode,
            ("torch", s) => Global::Storage(match s {
                "FloatStorage" => Elem::F32,
                "DoubleStorage" => Elem::F64,
                "HalfStorage" => Elem::F16,
                "BFloat16Storage" => Elem::BF16,
                "LongStorage" => Elem::I64,
                "IntStorage" => Elem::I32,
                "ShortStorage" => Elem::I16,
                "CharStorage" => Elem::I8,
                "ByteStorage" => Elem::U8,
                "BoolStorage" => Elem::Bool,
                _ => return None,
            }),
            _ => return None,
        })
    }

    fn class_name(self) -> String {
        match self {
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::Storage(e) => format!("torch.{e:?}Storage"),
            Global::Device => "torch.device".into(),
            Global::Namespace => "argparse.Namespace".into(),
            Global::CodecsEncode => "_codecs.encode".into(),
        }
    }
}

/// Why a file is refused outright (a global outside the allow-list, the cost budget, the
/// nesting bound). Kept as its own type so the message, which names the file and the
/// reason, reaches the user without the opcode context around it.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// What unpickling one file may cost, in bytes allocated plus elements touched:
/// `BUDGET_PER_FILE_BYTE` × the file's size + `BUDGET_BASE`. An honest `torch.save` file
/// costs about 3× its size (the storage bytes, the gathered tensors, their owned copies; 4×
/// when f16 widens to f32) plus ~100 bytes per container, so 32× leaves a wide margin,
/// while a pickle whose memo references would be copied out (`a = [a, a]` 60 times is
/// 1.7 KB and 2^60 nodes), a stride-0 view claiming terabytes or a deflate bomb is refused
/// at a bound the user can predict from the file's size. The base lets a small file hold a
/// few hundred thousand nodes.
const BUDGET_PER_FILE_BYTE: u64 = 32;
const BUDGET_BASE: u64 = 64 << 20;

/// Cost charged per container, string or other node (about its size in memory).
const NODE_COST: u64 = 64;

/// Deepest container nesting accepted. Checkpoints nest 3–5 levels (checkpoint → optimizer
/// → state → index → tensor); 256 is far beyond any honest file and keeps the nested
/// [`PickleValue`] handed to callers shallow enough that dropping or comparing it (both
/// recursive) cannot overflow a 2 MiB thread stack. The unpickler itself never recurses.
pub const MAX_PICKLE_DEPTH: usize = 256;

struct Budget {
    limit: u64,
    used: u64,
    file: String,
    file_len: u64,
}

impl Budget {
    fn for_file(file: &str, file_len: u64) -> Self {
        let limit = file_len.saturating_mul(BUDGET_PER_FILE_BYTE).saturating_add(BUDGET_BASE);
        Budget { limit, used: 0, file: file.to_string(), file_len }
    }

    fn charge(&mut self, n: u64) -> Result<()> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limit {
            return Err(Refused(format!(
                "refusing {}: loading it would take more than {} MiB of memory and work, the budget of a \
                 {}-byte file ({BUDGET_PER_FILE_BYTE} × its size + {} MiB): its pickle expands far beyond its size \
                 (shared references copied out, or a tensor larger than its storage), which no torch.save file does",
                self.file,
                self.limit >> 20,
                self.file_len,
                BUDGET_BASE >> 20
            ))
            .into());
        }
        Ok(())
    }

    fn too_deep(&self) -> anyhow::Error {
        Refused(format!(
            "refusing {}: its pickle nests containers deeper than {MAX_PICKLE_DEPTH} levels (or contains itself), \
             which no torch.save checkpoint does",
            self.file
        ))
        .into()
    }
}

/// Reads a zip entry whose header declares `declared` bytes, charging them first so that a
/// deflate bomb is refused before it is inflated. Reads at most one byte more than
/// declared: enough for the zip reader to reach the entry's end, where it checks the CRC,
/// and to notice an entry that inflates past its declared size.
fn read_entry(e: impl Read, declared: u64, budget: &mut Budget, what: &str) -> Result<Vec<u8>> {
    budget.charge(declared)?;
    let mut bytes = Vec::with_capacity(declared.min(1 << 30) as usize);
    e.take(declared.saturating_add(1)).read_to_end(&mut bytes).with_context(|| format!("{what} is truncated or corrupt"))?;
    if bytes.len() as u64 > declared {
        bail!("{what} is corrupt: it holds more than the {declared} bytes its header declares");
    }
    Ok(bytes)
}

struct Storage {
    elem: Elem,
    bytes: Vec<u8>,
}

struct Obj {
    class: Global,
    args: Vec<V>,
    state: Option<V>,
}

/// Index of a node in the unpickler's store.
type Id = usize;

/// A working value: a scalar, or a reference to a node of the store. Lists, dicts and
/// objects are shared and mutable as in Python (the memo and the stack may hold the same
/// dict while SETITEMS fills it); a memo reference copies the index, never the node, and
/// nodes are freed all at once with the store, so a deep or cyclic graph cannot recurse.
#[derive(Clone, Copy, Debug)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(Id),
}

enum Node {
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(Vec<V>),
    Tuple(Vec<V>),
    Dict(Dict),
    Tensor(HostTensor),
    Global(Global),
    Storage(Storage),
    Object(Obj),
}

struct Entry {
    node: Node,
    /// Nesting depth when created (containers: 1 + deepest child), raised when a child is
    /// added. Not propagated to the containers that already hold this one: conversion
    /// checks the real depth along every path.
    depth: usize,
}

/// A dict in insertion order, with a hash index on its keys: assignment is O(key size),
/// not a scan, so a million-key dict cannot take a trillion comparisons.
#[derive(Default)]
struct Dict {
    items: Vec<(V, V)>,
    index: HashMap<Key, usize>,
}

/// The hashable form of a dict key (scalars, strings, bytes and tuples of those, as Python
/// hashes). Int and float keys do not compare equal to each other (torch never mixes them).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    None,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Vec<Key>),
}

/// Calls `f` with the storage element index of every tensor element, in row-major order.
fn for_each_index(offset: usize, size: &[usize], stride: &[usize], mut f: impl FnMut(usize)) {
    if size.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; size.len()];
    let mut lin = offset;
    loop {
        f(lin);
        // Odometer increment from the last dimension.
        let mut d = size.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            // Wrapping: a huge stride on a size-1 dim passes the bounds check in gather()
            // but would overflow here; the modular arithmetic still returns to the right index.
            lin = lin.wrapping_add(stride[d]);
            if idx[d] < size[d] {
                break;
            }
            lin = lin.wrapping_sub(stride[d].wrapping_mul(size[d]));
            idx[d] = 0;
        }
    }
}

/// Materialises a strided view of `storage` as a row-major host tensor.
fn gather(storage: &Storage, offset: usize, size: &[usize], stride: &[usize], budget: &mut Budget) -> Result<HostTensor> {
    if size.len() != stride.len() {
        bail!("tensor size {size:?} and stride {stride:?} differ in rank");
    }
    let numel = size.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).context("tensor size overflows")?;
    let es = storage.elem.size();
    let avail = storage.bytes.len() / es;
    if numel > 0 {
        let last = size
            .iter()
            .zip(stride)
            .try_fold(offset, |a, (&s, &st)| (s - 1).checked_mul(st).and_then(|x| a.checked_add(x)))
            .context("tensor view overflows")?;
        if last >= avail {
            bail!("tensor view (offset {offset}, size {size:?}, stride {stride:?}) reaches element {last} of a {avail}-element storage");
        }
    }
    // Charged before allocating: a stride-0 view of one element may claim any size.
    let out_size: u64 = match storage.elem {
        Elem::F64 | Elem::I64 | Elem::I32 | Elem::I16 | Elem::I8 => 8,
        Elem::F32 | Elem::F16 | Elem::BF16 => 4,
        Elem::U8 | Elem::Bool => 1,
    };
    budget.charge(NODE_COST + (numel as u64).saturating_mul(out_size))?;
    let b = &storage.bytes;
    fn collect<T>(numel: usize, offset: usize, size: &[usize], stride: &[usize], at: impl Fn(usize) -> T) -> Vec<T> {
        let mut v = Vec::with_capacity(numel);
        for_each_index(offset, size, stride, |i| v.push(at(i)));
        v
    }
    let g = |i: usize, n: usize| &b[i * n..i * n + n];
    let data = match storage.elem {
        Elem::F32 => HostData::F32(collect(numel, offset, size, stride, |i| f32::from_le_bytes(g(i, 4).try_into().unwrap()))),
        Elem::F64 => HostData::F64(collect(numel, offset, size, stride, |i| f64::from_le_bytes(g(i, 8).try_into().unwrap()))),
        Elem::F16 => HostData::F32(collect(numel, offset, size, stride, |i| half::f16::from_le_bytes(g(i, 2).try_into().unwrap()).to_f32())),
        Elem::BF16 => HostData::F32(collect(numel, offset, size, stride, |i| half::bf16::from_le_bytes(g(i, 2).try_into().unwrap()).to_f32())),
        Elem::I64 => HostData::I64(collect(numel, offset, size, stride, |i| i64::from_le_bytes(g(i, 8).try_into().unwrap()))),
        Elem::I32 => HostData::I64(collect(numel, offset, size, stride, |i| i32::from_le_bytes(g(i, 4).try_into().unwrap()) as i64)),
        Elem::I16 => HostData::I64(collect(numel, offset, size, stride, |i| i16::from_le_bytes(g(i, 2).try_into().unwrap()) as i64)),
        Elem::I8 => HostData::I64(collect(numel, offset, size, stride, |i| b[i] as i8 as i64)),
        Elem::U8 | Elem::Bool => HostData::U8(collect(numel, offset, size, stride, |i| b[i])),
    };
    HostTensor::new(size.to_vec(), data)
}

struct Unpickler<'a, R: Read + Seek> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u32, V>,
    store: Vec<Entry>,
    budget: Budget,
    zip: &'a mut ZipArchive<R>,
    prefix: String,
    storages: HashMap<String, Id>,
    file: &'a str,
}

impl<'a, R: Read + Seek> Unpickler<'a, R> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).context("pickle ends early (truncated or corrupt)")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize)
    }

    fn u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize)
    }

    fn u64(&mut self) -> Result<usize> {
        usize::try_from(u64::from_le_bytes(self.take(8)?.try_into().unwrap())).context("length overflows")
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&c| c == b'\n').context("pickle ends early (truncated or corrupt)")?;
        let s = std::str::from_utf8(&rest[..n]).context("GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<V> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).context("string is not UTF-8")?;
        self.alloc(Node::Str(s.into()))
    }

    fn node(&self, v: V) -> Option<&Node> {
        match v {
            V::Ref(id) => Some(&self.store[id].node),
            _ => None,
        }
    }

    fn kind(&self, v: V) -> &'static str {
        match v {
            V::None => "None",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::Float(_) => "float",
            V::Ref(id) => match &self.store[id].node {
                Node::Str(_) => "str",
                Node::Bytes(_) => "bytes",
                Node::List(_) => "list",
                Node::Tuple(_) => "tuple",
                Node::Dict(_) => "dict",
                Node::Tensor(_) => "tensor",
                Node::Global(_) => "global",
                Node::Storage(_) => "storage",
                Node::Object(_) => "object",
            },
        }
    }

    fn depth(&self, v: V) -> usize {
        match v {
            V::Ref(id) => self.store[id].depth,
            _ => 0,
        }
    }

    /// Adds a node to the store, charging its size and checking its nesting.
    fn alloc(&mut self, node: Node) -> Result<V> {
        let (payload, depth) = match &node {
            Node::Str(s) => (s.len() as u64, 0),
            Node::Bytes(b) => (b.len() as u64, 0),
            Node::List(items) | Node::Tuple(items) => (16 * items.len() as u64, 1 + items.iter().map(|&v| self.depth(v)).max().unwrap_or(0)),
            Node::Dict(d) => (64 * d.items.len() as u64, 1 + d.items.iter().map(|&(k, v)| self.depth(k).max(self.depth(v))).max().unwrap_or(0)),
            // Charged by gather() / read_entry() before their bytes were allocated.
            Node::Tensor(_) | Node::Storage(_) | Node::Global(_) => (0, 0),
            Node::Object(o) => (
                16 * o.args.len() as u64,
                1 + o.args.iter().chain(&o.state).map(|&v| self.depth(v)).max().unwrap_or(0),
            ),
        };
        self.budget.charge(NODE_COST + payload)?;
        if depth > MAX_PICKLE_DEPTH {
            return Err(self.budget.too_deep());
        }
        self.store.push(Entry { node, depth });
        Ok(V::Ref(self.store.len() - 1))
    }

    /// Records that container `id` now holds `child`.
    fn deepen(&mut self, id: Id, child: V) -> Result<()> {
        let d = self.depth(child) + 1;
        let e = &mut self.store[id];
        e.depth = e.depth.max(d);
        if e.depth > MAX_PICKLE_DEPTH {
            return Err(self.budget.too_deep());
        }
        Ok(())
    }

    /// The hashable form of `v`, or None for an unhashable key (a list, dict, tensor, or a
    /// NaN, which equals nothing): such a key never replaces an earlier one.
    fn key(&mut self, v: V) -> Result<Option<Key>> {
        Ok(Some(match v {
            V::None => Key::None,
            V::Bool(b) => Key::Bool(b),
            V::Int(i) => Key::Int(i),
            V::Float(f) if f.is_nan() => return Ok(None),
            // 0.0 == -0.0 as keys.
            V::Float(f) => Key::Float(if f == 0.0 { 0 } else { f.to_bits() }),
            V::Ref(id) => match &self.store[id].node {
                Node::Str(s) => {
                    let s = s.clone();
                    self.budget.charge(s.len() as u64 + 1)?; // hashing it
                    Key::Str(s)
                }
                Node::Bytes(b) => {
                    let b = b.clone();
                    self.budget.charge(b.len() as u64 + 1)?;
                    Key::Bytes(b)
                }
                Node::Tuple(items) => {
                    // Tuples are immutable, so their recorded depth is exact and this
                    // recursion is bounded by MAX_PICKLE_DEPTH.
                    let items = items.clone();
                    self.budget.charge(NODE_COST + 16 * items.len() as u64)?;
                    let mut keys = Vec::with_capacity(items.len());
                    for x in items {
                        match self.key(x)? {
                            Some(k) => keys.push(k),
                            None => return Ok(None),
                        }
                    }
                    Key::Tuple(keys)
                }
                _ => return Ok(None),
            },
        }))
    }

    fn dict_set(&mut self, id: Id, k: V, v: V) -> Result<()> {
        let key = self.key(k)?;
        self.budget.charge(64)?;
        self.deepen(id, k)?;
        self.deepen(id, v)?;
        let Node::Dict(d) = &mut self.store[id].node else { unreachable!("dict_set on a non-dict") };
        match key {
            Some(key) => match d.index.get(&key) {
                Some(&i) => d.items[i].1 = v,
                None => {
                    d.index.insert(key, d.items.len());
                    d.items.push((k, v));
                }
            },
            None => d.items.push((k, v)),
        }
        Ok(())
    }

    fn new_dict(&mut self) -> Result<Id> {
        match self.alloc(Node::Dict(Dict::default()))? {
            V::Ref(id) => Ok(id),
            _ => unreachable!(),
        }
    }

    fn int(&self, v: V, what: &str) -> Result<i64> {
        match v {
            V::Int(i) => Ok(i),
            V::Bool(b) => Ok(b as i64),
            v => bail!("{what}: expected int, found {}", self.kind(v)),
        }
    }

    fn usize_tuple(&mut self, v: V, what: &str) -> Result<Vec<usize>> {
        let items = match self.node(v) {
            Some(Node::Tuple(t) | Node::List(t)) => t.clone(),
            _ => bail!("{what}: expected tuple, found {}", self.kind(v)),
        };
        self.budget.charge(8 * items.len() as u64)?;
        items.iter().map(|&x| usize::try_from(self.int(x, what)?).map_err(|_| anyhow!("{what}: negative value"))).collect()
    }

    fn str_of(&self, v: V) -> Option<Rc<str>> {
        match self.node(v) {
            Some(Node::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn pop(&mut self) -> Result<V> {
        self.stack.pop().context("pickle stack underflow")
    }

    fn top(&self) -> Result<V> {
        self.stack.last().copied().context("pickle stack underflow")
    }

    fn pop_mark(&mut self) -> Result<Vec<V>> {
        let m = self.marks.pop().context("pickle MARK missing")?;
        if m > self.stack.len() {
            bail!("pickle MARK beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<V> {
        match Global::lookup(module, name) {
            Some(g) => self.alloc(Node::Global(g)),
            None => Err(Refused(format!("refusing pickle global {module}.{name} in {}: only tensors and plain containers are loaded", self.file)).into()),
        }
    }

    fn storage(&mut self, pid: V) -> Result<V> {
        let Some(Node::Tuple(t)) = self.node(pid) else { bail!("persistent id is a {}, expected a tuple", self.kind(pid)) };
        let t = t.clone();
        let [tag, ty, key, _location, numel] = t[..] else {
            bail!("unsupported persistent id (expected ('storage', type, key, location, numel))")
        };
        let (Some(tag), Some(key)) = (self.str_of(tag), self.str_of(key)) else {
            bail!("unsupported persistent id (expected ('storage', type, key, location, numel))")
        };
        if &*tag != "storage" {
            bail!("unsupported persistent id kind {tag:?}");
        }
        let Some(&Node::Global(Global::Storage(elem))) = self.node(ty) else {
            bail!("persistent id storage type is a {}, not a torch storage class", self.kind(ty))
        };
        let numel = usize::try_from(self.int(numel, "storage numel")?).context("negative storage numel")?;
        self.budget.charge(key.len() as u64)?; // the lookup
        if let Some(&id) = self.storages.get(&*key) {
            let Node::Storage(s) = &self.store[id].node else { unreachable!() };
            if s.elem != elem {
                bail!("storage {key} used with two element types");
            }
            return Ok(V::Ref(id));
        }
        let entry = format!("{}data/{key}", self.prefix);
        let f = self.zip.by_name(&entry).with_context(|| format!("missing storage entry {entry}"))?;
        let declared = f.size();
        let bytes = read_entry(f, declared, &mut self.budget, &format!("entry {entry}"))?;
        let need = numel.checked_mul(elem.size()).context("storage size overflows")?;
        if bytes.len() < need {
            bail!("entry {entry} holds {} bytes, its storage needs {need} (truncated or corrupt)", bytes.len());
        }
        let v = self.alloc(Node::Storage(Storage { elem, bytes }))?;
        let V::Ref(id) = v else { unreachable!() };
        self.storages.insert(key.to_string(), id);
        Ok(v)
    }

    fn call(&mut self, g: Global, args: Vec<V>) -> Result<V> {
        match g {
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                let storage = match args[..] {
                    [s, _, _, _, _, _] | [s, _, _, _, _, _, _] if matches!(self.node(s), Some(Node::Storage(_))) => s,
                    _ => bail!("_rebuild_tensor_v2: expected (storage, offset, size, stride, requires_grad, hooks)"),
                };
                let offset = usize::try_from(self.int(args[1], "storage_offset")?).context("negative storage offset")?;
                let size = self.usize_tuple(args[2], "size")?;
                let stride = self.usize_tuple(args[3], "stride")?;
                let V::Ref(sid) = storage else { unreachable!() };
                let Node::Storage(s) = &self.store[sid].node else { unreachable!() };
                let t = gather(s, offset, &size, &stride, &mut self.budget)?;
                self.alloc(Node::Tensor(t))
            }
            Global::RebuildParameter => match args.first() {
                // The same node: a parameter shares its tensor, as in torch.
                Some(&t) if matches!(self.node(t), Some(Node::Tensor(_))) => Ok(t),
                _ => bail!("_rebuild_parameter: expected a tensor"),
            },
            Global::OrderedDict => {
                let d = self.new_dict()?;
                match args[..] {
                    [] => {}
                    [l] if matches!(self.node(l), Some(Node::List(_))) => {
                        let Some(Node::List(items)) = self.node(l) else { unreachable!() };
                        let items = items.clone();
                        self.budget.charge(16 * items.len() as u64)?;
                        for it in items {
                            match self.node(it) {
                                Some(Node::Tuple(kv)) if kv.len() == 2 => {
                                    let (k, v) = (kv[0], kv[1]);
                                    self.dict_set(d, k, v)?;
                                }
                                _ => bail!("OrderedDict: items must be (key, value) pairs"),
                            }
                        }
                    }
                    _ => bail!("OrderedDict: unsupported arguments"),
                }
                Ok(V::Ref(d))
            }
            Global::CodecsEncode => match args[..] {
                [s, enc] => {
                    let (Some(s), Some(enc)) = (self.str_of(s), self.str_of(enc)) else { bail!("_codecs.encode: only (str, 'latin1') is supported") };
                    if &*enc != "latin1" && &*enc != "latin-1" {
                        bail!("_codecs.encode: only (str, 'latin1') is supported");
                    }
                    self.budget.charge(s.len() as u64)?;
                    let b: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    self.alloc(Node::Bytes(b.context("_codecs.encode: non-latin1 character")?.into()))
                }
                _ => bail!("_codecs.encode: only (str, 'latin1') is supported"),
            },
            Global::Device | Global::Namespace => self.alloc(Node::Object(Obj { class: g, args, state: None })),
            Global::Storage(_) => bail!("{} cannot be called, only referenced by a persistent id", g.class_name()),
        }
    }

    fn run(&mut self) -> Result<V> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            self.step(op).with_context(|| format!("pickle opcode 0x{op:02x} at offset {at}"))?;
            if op == b'.' {
                let v = self.pop()?;
                return Ok(v);
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<()> {
        match op {
            0x80 => {
                let p = self.u8()?;
                if p > 5 {
                    bail!("unsupported pickle protocol {p}");
                }
            }
            0x95 => {
                self.take(8)?; // FRAME: a length hint only
            }
            b'.' => {} // STOP: handled by run()
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?;
                self.stack.push(v);
            }
            b'N' => self.stack.push(V::None),
            0x88 => self.stack.push(V::Bool(true)),
            0x89 => self.stack.push(V::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                self.stack.push(V::Int(v as i64));
            }
            b'K' => {
                let v = self.u8()?;
                self.stack.push(V::Int(v as i64));
            }
            b'M' => {
                let v = self.u16()?;
                self.stack.push(V::Int(v as i64));
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? };
                let b = self.take(n)?;
                if n > 8 {
                    bail!("integer of {n} bytes does not fit in 64 bits");
                }
                // Little-endian two's complement, sign-extended from its top byte.
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                buf[..n].copy_from_slice(b);
                self.stack.push(V::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                self.stack.push(V::Float(v));
            }
            b'X' => {
                let n = self.u32()?;
                let s = self.string(n)?;
                self.stack.push(s);
            }
            0x8c => {
                let n = self.u8()? as usize;
                let s = self.string(n)?;
                self.stack.push(s);
            }
            0x8d => {
                let n = self.u64()?;
                let s = self.string(n)?;
                self.stack.push(s);
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => self.u32()?,
                    b'C' => self.u8()? as usize,
                    _ => self.u64()?,
                };
                let b = self.take(n)?;
                let v = self.alloc(Node::Bytes(b.into()))?;
                self.stack.push(v);
            }
            b'T' | b'U' => {
                // Python 2 str: bytes, taken as latin-1 text as Python 3's default does.
                let n = if op == b'T' { self.u32()? } else { self.u8()? as usize };
                let b = self.take(n)?;
                let v = self.alloc(Node::Str(b.iter().map(|&c| c as char).collect::<String>().into()))?;
                self.stack.push(v);
            }
            b'}' => {
                let d = self.new_dict()?;
                self.stack.push(V::Ref(d));
            }
            b']' => {
                let v = self.alloc(Node::List(Vec::new()))?;
                self.stack.push(v);
            }
            b')' => {
                let v = self.alloc(Node::Tuple(Vec::new()))?;
                self.stack.push(v);
            }
            b'd' => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    bail!("DICT with an odd number of items");
                }
                let d = self.new_dict()?;
                for kv in items.chunks(2) {
                    self.dict_set(d, kv[0], kv[1])?;
                }
                self.stack.push(V::Ref(d));
            }
            b'l' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Node::List(items))?;
                self.stack.push(v);
            }
            b't' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Node::Tuple(items))?;
                self.stack.push(v);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    bail!("pickle stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                let v = self.alloc(Node::Tuple(items))?;
                self.stack.push(v);
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    vec![k, v]
                } else {
                    self.pop_mark()?
                };
                if items.len() % 2 != 0 {
                    bail!("SETITEMS with an odd number of items");
                }
                let top = self.top()?;
                let (V::Ref(d), Some(Node::Dict(_))) = (top, self.node(top)) else { bail!("SETITEM on a {}", self.kind(top)) };
                for kv in items.chunks(2) {
                    self.dict_set(d, kv[0], kv[1])?;
                }
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                let top = self.top()?;
                let (V::Ref(l), Some(Node::List(_))) = (top, self.node(top)) else { bail!("APPEND on a {}", self.kind(top)) };
                self.budget.charge(16 * items.len() as u64)?;
                for &v in &items {
                    self.deepen(l, v)?;
                }
                let Node::List(list) = &mut self.store[l].node else { unreachable!() };
                list.extend(items);
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => self.u8()? as u32,
                    b'r' => self.u32()? as u32,
                    _ => self.memo.len() as u32,
                };
                let v = self.top()?;
                self.memo.insert(idx, v);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' { self.u8()? as u32 } else { self.u32()? as u32 };
                let v = *self.memo.get(&idx).with_context(|| format!("memo entry {idx} missing"))?;
                self.stack.push(v);
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = self.global(module, name)?;
                self.stack.push(g);
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else { bail!("STACK_GLOBAL needs two strings") };
                let g = self.global(&m, &n)?;
                self.stack.push(g);
            }
            b'Q' => {
                let pid = self.pop()?;
                let s = self.storage(pid)?;
                self.stack.push(s);
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let Some(Node::Tuple(a)) = self.node(args) else { bail!("call arguments are a {}, not a tuple", self.kind(args)) };
                let a = a.clone();
                let Some(&Node::Global(g)) = self.node(callable) else { bail!("cannot call a {}", self.kind(callable)) };
                self.budget.charge(16 * a.len() as u64)?;
                let v = self.call(g, a)?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                let top = self.top()?;
                match self.node(top) {
                    // OrderedDict attributes (a state dict's `_metadata`) and tensor state
                    // (`requires_grad` hooks) carry nothing we keep.
                    Some(Node::Dict(_) | Node::Tensor(_)) => {}
                    Some(Node::Object(_)) => {
                        let V::Ref(id) = top else { unreachable!() };
                        self.deepen(id, state)?;
                        let Node::Object(o) = &mut self.store[id].node else { unreachable!() };
                        o.state = Some(state);
                    }
                    _ => bail!("BUILD on a {}", self.kind(top)),
                }
            }
            _ => bail!("unsupported pickle opcode 0x{op:02x}"),
        }
        Ok(())
    }
}

/// Converts the working graph to owned values, iteratively (an explicit task stack, so no
/// input can overflow the thread's stack). Every path is checked against
/// [`MAX_PICKLE_DEPTH`] (which also stops a container that holds itself) and every node
/// produced is charged, so a node shared through the memo costs each time it is copied out.
fn convert(store: &[Entry], root: V, budget: &mut Budget) -> Result<PickleValue> {
    enum Task {
        Visit(V, usize),
        Build(Id),
    }
    const OUT_COST: u64 = NODE_COST + std::mem::size_of::<PickleValue>() as u64;
    let mut tasks = vec![Task::Visit(root, 0)];
    let mut out: Vec<PickleValue> = Vec::new();
    let children = |id: Id| -> usize {
        match &store[id].node {
            Node::List(v) | Node::Tuple(v) => v.len(),
            Node::Dict(d) => 2 * d.items.len(),
            Node::Object(o) => o.args.len() + o.state.is_some() as usize,
            _ => 0,
        }
    };
    while let Some(task) = tasks.pop() {
        match task {
            Task::Visit(v, depth) => {
                budget.charge(OUT_COST)?;
                let id = match v {
                    V::None => {
                        out.push(PickleValue::None);
                        continue;
                    }
                    V::Bool(b) => {
                        out.push(PickleValue::Bool(b));
                        continue;
                    }
                    V::Int(i) => {
                        out.push(PickleValue::Int(i));
                        continue;
                    }
                    V::Float(f) => {
                        out.push(PickleValue::Float(f));
                        continue;
                    }
                    V::Ref(id) => id,
                };
                let items: Vec<V> = match &store[id].node {
                    Node::Str(s) => {
                        budget.charge(s.len() as u64)?;
                        out.push(PickleValue::Str(s.to_string()));
                        continue;
                    }
                    Node::Bytes(b) => {
                        budget.charge(b.len() as u64)?;
                        out.push(PickleValue::Bytes(b.to_vec()));
                        continue;
                    }
                    Node::Tensor(t) => {
                        budget.charge(host_bytes(&t.data))?;
                        out.push(PickleValue::Tensor(t.clone()));
                        continue;
                    }
                    Node::Global(g) => {
                        out.push(PickleValue::Object { class: g.class_name(), args: vec![], state: None });
                        continue;
                    }
                    Node::Storage(_) => bail!("a bare storage outside a tensor is not supported"),
                    Node::List(items) | Node::Tuple(items) => items.clone(),
                    Node::Dict(d) => d.items.iter().flat_map(|&(k, v)| [k, v]).collect(),
                    Node::Object(o) => o.args.iter().chain(&o.state).copied().collect(),
                };
                if depth >= MAX_PICKLE_DEPTH {
                    return Err(budget.too_deep());
                }
                budget.charge(32 * items.len() as u64)?;
                tasks.push(Task::Build(id));
                tasks.extend(items.into_iter().rev().map(|c| Task::Visit(c, depth + 1)));
            }
            Task::Build(id) => {
                let n = children(id);
                let mut items = out.split_off(out.len() - n);
                let v = match &store[id].node {
                    Node::List(_) => PickleValue::List(items),
                    Node::Tuple(_) => PickleValue::Tuple(items),
                    Node::Dict(_) => {
                        let mut pairs = Vec::with_capacity(n / 2);
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            pairs.push((k, v));
                        }
                        PickleValue::Dict(pairs)
                    }
                    Node::Object(o) => {
                        let state = if o.state.is_some() { items.pop().map(Box::new) } else { None };
                        PickleValue::Object { class: o.class.class_name(), args: items, state }
                    }
                    _ => unreachable!("only containers are built"),
                };
                out.push(v);
            }
        }
    }
    out.pop().context("empty pickle")
}

fn host_bytes(d: &HostData) -> u64 {
    let per = match d {
        HostData::F32(_) => 4,
        HostData::F64(_) | HostData::I64(_) => 8,
        HostData::U8(_) => 1,
    };
    per * d.len() as u64
}

/// Loads the object a `torch.save` zip archive holds. Only tensors, storages and plain
/// containers are rebuilt; any other pickle global is refused by name, and the memory and
/// work spent are bounded by the file's size (`BUDGET_PER_FILE_BYTE` bytes of work per byte of file, plus a fixed base).
pub fn load_pth(path: &Path) -> Result<PickleValue> {
    let file = path.display().to_string();
    let f = File::open(path).with_context(|| format!("cannot open {file}"))?;
    let meta = f.metadata().with_context(|| format!("cannot open {file}"))?;
    if !meta.is_file() {
        bail!("{file} is not a regular file (expected a torch.save checkpoint)");
    }
    let mut budget = Budget::for_file(&file, meta.len());
    let mut zip = ZipArchive::new(BufReader::new(f))
        .map_err(|e| anyhow!("{file}: not a readable torch.save zip archive (truncated or corrupt, or the legacy pre-1.6 format): {e}"))?;
    // torch names the top folder after the file (`archive/` in recent versions): find it.
    let pkl: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .collect();
    let [pkl] = &pkl[..] else { bail!("{file}: expected one <dir>/data.pkl entry, found {}: not a torch.save archive", pkl.len()) };
    let prefix = pkl.strip_suffix("data.pkl").unwrap().to_string();
    if let Ok(bo) = zip.by_name(&format!("{prefix}byteorder")) {
        let declared = bo.size();
        let b = read_entry(bo, declared, &mut budget, &format!("{file}: byteorder entry"))?;
        let s = String::from_utf8_lossy(&b);
        if s.trim() != "little" {
            bail!("{file}: byte order {s:?} is not supported (only little-endian checkpoints)");
        }
    }
    let data = match zip.by_name(pkl) {
        Ok(e) => {
            let declared = e.size();
            read_entry(e, declared, &mut budget, &format!("{file}: entry {pkl}"))?
        }
        Err(e) => return Err(anyhow::Error::from(e).context(format!("{file}: entry {pkl} is truncated or corrupt"))),
    };
    let mut u = Unpickler {
        data: &data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        store: Vec::new(),
        budget,
        zip: &mut zip,
        prefix,
        storages: HashMap::new(),
        file: &file,
    };
    let passthrough = |e: anyhow::Error| match e.downcast_ref::<Refused>() {
        // A refusal already names the file and the reason: report it as it is.
        Some(r) => anyhow!("{r}"),
        None => e.context(format!("{file}: cannot load {pkl}")),
    };
    let root = u.run().map_err(passthrough)?;
    let Unpickler { mut store, mut budget, .. } = u;
    // Storage bytes are no longer needed once every tensor is gathered: free them before
    // the tensors are copied out.
    for e in &mut store {
        if let Node::Storage(s) = &mut e.node {
            s.bytes = Vec::new();
        }
    }
    convert(&store, root, &mut budget).map_err(passthrough)
}

/// The state dict of an official checkpoint: for `*_withdecoder_1kpretrained_spark_style.pth`
/// the `module` dict (SparK names), for `*_1kpretrained_timm_style.pth` the bare encoder dict
/// (timm/official names). Non-tensor entries (e.g. `config`) are skipped. A bare dict whose
/// names carry the SparK `sparse_encoder.` prefix also counts as [`CheckpointStyle::SparkFull`].
pub fn load_state_dict(path: &Path) -> Result<(TensorMap, CheckpointStyle)> {
    let root = load_pth(path)?;
    let file = path.display();
    let PickleValue::Dict(mut top) = root else { bail!("{file}: the checkpoint is not a dict") };
    let module = top.iter().position(|(k, v)| matches!((k, v), (PickleValue::Str(s), PickleValue::Dict(_)) if s == "module"));
    let (items, from_module) = match module {
        Some(i) => match top.swap_remove(i).1 {
            PickleValue::Dict(m) => (m, true),
            _ => unreachable!(),
        },
        None => (top, false),
    };
    let mut map = TensorMap::new();
    for (k, v) in items {
        if let (PickleValue::Str(k), PickleValue::Tensor(t)) = (k, v) {
            map.insert(k, t);
        }
    }
    if map.is_empty() {
        bail!("{file}: no tensors found (expected a state dict, or a dict with a `module` state dict)");
    }
    let spark = from_module || map.keys().any(|k| k.starts_with("sparse_encoder."));
    Ok((map, if spark { CheckpointStyle::SparkFull } else { CheckpointStyle::EncoderOnly }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::golden::{GOLDEN_CASES, GoldenCase, golden_dir};
    use std::io::Write;

    /// Emits pickle opcodes by hand, for files no honest torch would write.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn proto(self) -> Self {
            self.op(&[0x80, 2])
        }
        fn global(self, m: &str, n: &str) -> Self {
            self.op(b"c").op(m.as_bytes()).op(b"\n").op(n.as_bytes()).op(b"\n")
        }
        fn str(self, s: &str) -> Self {
            let n = (s.len() as u32).to_le_bytes();
            self.op(b"X").op(&n).op(s.as_bytes())
        }
        fn int(self, i: i32) -> Self {
            self.op(b"J").op(&i.to_le_bytes())
        }
        fn ints(mut self, v: &[i32]) -> Self {
            self = self.op(b"(");
            for &i in v {
                self = self.int(i);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(<storage key of type ty>, offset, size, stride, False, OrderedDict())`
        fn tensor(self, ty: &str, key: &str, numel: i32, offset: i32, size: &[i32], stride: &[i32]) -> Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b"(")
                .op(b"(")
                .str("storage")
                .global("torch", ty)
                .str(key)
                .str("cpu")
                .int(numel)
                .op(b"tQ")
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(&[0x89])
                .global("collections", "OrderedDict")
                .op(b")R")
                .op(b"tR")
        }
    }

    fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn golden(name: &str) -> GoldenCase {
        GoldenCase::load(&golden_dir().join(format!("{name}.safetensors"))).unwrap()
    }

    #[test]
    fn spark_style_checkpoints_equal_case_inputs() {
        for case in GOLDEN_CASES {
            let g = golden(case);
            let path = golden_dir().join(format!("{case}_withdecoder_1kpretrained_spark_style.pth"));
            let (sd, style) = load_state_dict(&path).unwrap();
            assert_eq!(style, CheckpointStyle::SparkFull, "{case}");
            let inputs = g.inputs();
            for (k, t) in &inputs {
                assert_eq!(sd.get(k), Some(t), "{case}: {k}");
            }
            // SparK also registers its (non-learned) normalisation constants as buffers.
            let extra: Vec<_> = sd.keys().filter(|k| !inputs.contains_key(*k)).map(String::as_str).collect();
            assert_eq!(extra, ["imn_m", "imn_s", "norm_black"], "{case}");
            // (SparK allocates imn_m/imn_s with torch.empty: their values are arbitrary.)
            assert_eq!((&sd["imn_m"].shape[..], &sd["imn_s"].shape[..]), (&[1, 3, 1, 1][..], &[1, 3, 1, 1][..]));
            let s = g.meta.input_size;
            assert_eq!(sd["norm_black"].shape, [1, 3, s, s]);
        }
    }

    #[test]
    fn spark_style_checkpoint_structure() {
        let path = golden_dir().join("resnet_basic_tiny_withdecoder_1kpretrained_spark_style.pth");
        let root = load_pth(&path).unwrap();
        for k in ["module", "optimizer", "arch", "epoch", "input_size", "args", "is_pretrain"] {
            assert!(root.get(k).is_some(), "missing {k}");
        }
        assert_eq!(root.get("input_size").and_then(PickleValue::as_int), Some(64));
        assert_eq!(root.get("is_pretrain"), Some(&PickleValue::Bool(true)));
        let config = root.get("module").unwrap().get("config").unwrap();
        assert_eq!(config.get("mask_ratio"), Some(&PickleValue::Float(0.6)));
        assert_eq!(config.get("densify_norm_str").and_then(PickleValue::as_str), Some("bn"));
        let groups = root.get("optimizer").unwrap().get("param_groups").unwrap();
        let PickleValue::List(groups) = groups else { panic!("{groups:?}") };
        assert_eq!(groups[0].get("betas"), Some(&PickleValue::Tuple(vec![PickleValue::Float(0.9), PickleValue::Float(0.95)])));
        assert_eq!(groups[1].get("weight_decay"), Some(&PickleValue::Float(0.0)));
    }

    #[test]
    fn timm_style_checkpoints_equal_encoder_inputs() {
        for case in GOLDEN_CASES {
            let g = golden(case);
            let path = golden_dir().join(format!("{case}_1kpretrained_timm_style.pth"));
            let (sd, style) = load_state_dict(&path).unwrap();
            assert_eq!(style, CheckpointStyle::EncoderOnly, "{case}");
            let enc: TensorMap = g
                .inputs()
                .into_iter()
                .filter_map(|(k, t)| k.strip_prefix("sparse_encoder.sp_cnn.").map(|n| (n.to_string(), t)))
                .collect();
            assert_eq!(sd, enc, "{case}");
        }
    }

    #[test]
    fn malicious_globals_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let payloads = [
            ("posix.system", P::default().proto().global("posix", "system").str("echo pwned").op(&[0x85]).op(b"R.")),
            // STACK_GLOBAL form, and an allowed-looking module with a foreign name.
            ("builtins.eval", P::default().proto().str("builtins").str("eval").op(&[0x93]).str("1").op(&[0x85]).op(b"R.")),
            ("torch.load", P::default().proto().global("torch", "load").str("x").op(&[0x85]).op(b"R.")),
            // Hidden inside an otherwise normal state dict, after a legitimate tensor.
            (
                "os.remove",
                P::default()
                    .proto()
                    .op(b"}(")
                    .str("w")
                    .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
                    .str("x")
                    .global("os", "remove")
                    .str("/tmp/victim")
                    .op(&[0x85])
                    .op(b"Ru."),
            ),
        ];
        for (i, (global, pkl)) in payloads.into_iter().enumerate() {
            let path = dir.path().join(format!("evil{i}.pth"));
            let storage = f32_bytes(&[1.0, 2.0]);
            write_zip(&path, &[("archive/data.pkl", &pkl.0), ("archive/data/0", &storage)]);
            let err = format!("{:#}", load_pth(&path).unwrap_err());
            assert!(err.contains(&format!("refusing pickle global {global}")) && err.contains(&format!("evil{i}.pth")), "{err}");
            assert!(load_state_dict(&path).is_err());
        }
    }

    #[test]
    fn truncated_or_corrupt_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let src = std::fs::read(golden_dir().join("resnet_basic_tiny_1kpretrained_timm_style.pth")).unwrap();
        let cut = dir.path().join("cut.pth");
        std::fs::write(&cut, &src[..src.len() / 2]).unwrap();
        let err = format!("{:#}", load_state_dict(&cut).unwrap_err());
        assert!(err.contains("cut.pth") && err.contains("truncated or corrupt"), "{err}");

        // A flipped byte inside a storage entry: the zip CRC catches it.
        let (sd, _) = load_state_dict(&golden_dir().join("resnet_basic_tiny_1kpretrained_timm_style.pth")).unwrap();
        let needle = f32_bytes(&sd["layer4.0.conv2.weight"].to_f32()[..8]);
        let at = src.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap();
        let mut bad = src.clone();
        bad[at + 5] ^= 0x40;
        let flip = dir.path().join("flip.pth");
        std::fs::write(&flip, &bad).unwrap();
        let err = format!("{:#}", load_state_dict(&flip).unwrap_err());
        assert!(err.contains("flip.pth") && err.contains("truncated or corrupt"), "{err}");

        // A pickle that stops mid-stream.
        let p = P::default().proto().op(b"}(").str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]);
        let short = dir.path().join("short.pth");
        write_zip(&short, &[("archive/data.pkl", &p.0[..p.0.len() - 3]), ("archive/data/0", &f32_bytes(&[1.0, 2.0]))]);
        let err = format!("{:#}", load_pth(&short).unwrap_err());
        assert!(err.contains("short.pth") && err.contains("truncated or corrupt"), "{err}");

        // A storage entry shorter than its persistent id says.
        let p = P::default().proto().tensor("FloatStorage", "0", 4, 0, &[4], &[1]).op(b".");
        let small = dir.path().join("small.pth");
        write_zip(&small, &[("archive/data.pkl", &p.0), ("archive/data/0", &f32_bytes(&[1.0, 2.0]))]);
        let err = format!("{:#}", load_pth(&small).unwrap_err());
        assert!(err.contains("small.pth") && err.contains("truncated or corrupt"), "{err}");

        let err = format!("{:#}", load_pth(&dir.path().join("absent.pth")).unwrap_err());
        assert!(err.contains("absent.pth"), "{err}");
    }

    #[test]
    fn strided_views_materialise_row_major() {
        let dir = tempfile::tempdir().unwrap();
        let base: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let longs: Vec<u8> = [5i64, -7, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bf: Vec<u8> = [1.5f32, -0.25].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let p = P::default()
            .proto()
            .op(b"}(")
            // (2,3) view with offset 1, strides (1,4): element (i,j) = 1 + i + 4j (a transpose).
            .str("t")
            .tensor("FloatStorage", "0", 12, 1, &[2, 3], &[1, 4])
            // Contiguous slice at an offset of the same storage.
            .str("s")
            .tensor("FloatStorage", "0", 12, 6, &[2, 2], &[2, 1])
            // Broadcast (stride 0) and a scalar.
            .str("b")
            .tensor("FloatStorage", "0", 12, 3, &[2, 2], &[0, 1])
            .str("n")
            .tensor("LongStorage", "1", 3, 2, &[], &[])
            .str("h")
            .tensor("BFloat16Storage", "2", 2, 0, &[2], &[1])
            // Wrapped as nn.Parameter.
            .str("p")
            .global("torch._utils", "_rebuild_parameter")
            .op(b"(")
            .tensor("LongStorage", "1", 3, 0, &[3], &[1])
            .op(&[0x88])
            .global("collections", "OrderedDict")
            .op(b")RtR")
            .op(b"u.");
        let path = dir.path().join("views.pth");
        write_zip(&path, &[("archive/data.pkl", &p.0), ("archive/data/0", &f32_bytes(&base)), ("archive/data/1", &longs), ("archive/data/2", &bf)]);
        let (sd, style) = load_state_dict(&path).unwrap();
        assert_eq!(style, CheckpointStyle::EncoderOnly);
        assert_eq!(sd["t"], HostTensor::f32(vec![2, 3], vec![1.0, 5.0, 9.0, 2.0, 6.0, 10.0]));
        assert_eq!(sd["s"], HostTensor::f32(vec![2, 2], vec![6.0, 7.0, 8.0, 9.0]));
        assert_eq!(sd["b"], HostTensor::f32(vec![2, 2], vec![3.0, 4.0, 3.0, 4.0]));
        assert_eq!(sd["n"], HostTensor::new(vec![], HostData::I64(vec![9])).unwrap());
        assert_eq!(sd["h"], HostTensor::f32(vec![2], vec![1.5, -0.25]));
        assert_eq!(sd["p"], HostTensor::new(vec![3], HostData::I64(vec![5, -7, 9])).unwrap());

        // A size-1 dimension may carry any stride.
        let p = P::default().proto().tensor("FloatStorage", "0", 12, 2, &[1, 2], &[i32::MAX, 5]).op(b".");
        let odd = dir.path().join("odd.pth");
        write_zip(&odd, &[("archive/data.pkl", &p.0), ("archive/data/0", &f32_bytes(&base))]);
        assert_eq!(load_pth(&odd).unwrap(), PickleValue::Tensor(HostTensor::f32(vec![1, 2], vec![2.0, 7.0])));

        // A view that reaches past its storage is refused.
        let p = P::default().proto().tensor("FloatStorage", "0", 12, 4, &[3, 3], &[3, 1]).op(b".");
        let over = dir.path().join("over.pth");
        write_zip(&over, &[("archive/data.pkl", &p.0), ("archive/data/0", &f32_bytes(&base))]);
        let err = format!("{:#}", load_pth(&over).unwrap_err());
        assert!(err.contains("over.pth") && err.contains("12-element storage"), "{err}");
    }

    /// Runs `f` on a thread with a small stack: a conversion or drop that recursed once per
    /// nesting level would overflow it long before the 10^5–10^6 levels below.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(256 << 10).spawn(f).unwrap().join().unwrap()
    }

    fn load_err(dir: &Path, name: &str, pkl: &[u8], extra: &[(&str, &[u8])]) -> String {
        let path = dir.join(name);
        let mut entries = vec![("archive/data.pkl", pkl)];
        entries.extend_from_slice(extra);
        write_zip(&path, &entries);
        let err = on_small_stack(move || load_pth(&path).map(|_| ()).unwrap_err());
        format!("{err:#}")
    }

    #[test]
    fn shared_reference_bomb_is_refused_by_budget() {
        // a = []; then 60 times a = [a, a]: 2^60 nodes once copied out, from ~400 bytes.
        let mut p = P::default().proto().op(b"]q\x00");
        for _ in 0..60 {
            p = p.op(b"(h\x00h\x00lq\x00");
        }
        let dir = tempfile::tempdir().unwrap();
        let err = load_err(dir.path(), "bomb.pth", &p.op(b".").0, &[]);
        assert!(err.contains("refusing") && err.contains("bomb.pth") && err.contains("64 MiB") && err.contains("shared references"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let dir = tempfile::tempdir().unwrap();
        // The issue's file: a tuple nested 10^6 deep, `b'\x80\x02)' + b'\x85' * 10**6 + b'.'`.
        let mut pkl = b"\x80\x02)".to_vec();
        pkl.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        pkl.push(b'.');
        let err = load_err(dir.path(), "deep.pth", &pkl, &[]);
        assert!(err.contains("deep.pth") && err.contains(&format!("deeper than {MAX_PICKLE_DEPTH} levels")), "{err}");

        // Nesting built by mutation, invisible when each list is created: L_i.append(L_{i+1})
        // with L_{i+1} still empty, 10^5 times.
        let mut p = P::default().proto().op(b"]r").op(&0u32.to_le_bytes());
        for i in 0..100_000u32 {
            p = p.op(b"]r").op(&(i + 1).to_le_bytes());
            p = p.op(b"j").op(&i.to_le_bytes()).op(b"j").op(&(i + 1).to_le_bytes()).op(b"a0");
        }
        let p = p.op(b"j").op(&0u32.to_le_bytes()).op(b".");
        let err = load_err(dir.path(), "chain.pth", &p.0, &[]);
        assert!(err.contains("chain.pth") && err.contains(&format!("deeper than {MAX_PICKLE_DEPTH} levels")), "{err}");

        // A list that contains itself.
        let err = load_err(dir.path(), "cycle.pth", b"\x80\x02]q\x00h\x00a.", &[]);
        assert!(err.contains("cycle.pth") && err.contains("contains itself"), "{err}");

        // At the bound exactly, it loads.
        let mut pkl = b"\x80\x02)".to_vec();
        pkl.extend(std::iter::repeat_n(0x85u8, MAX_PICKLE_DEPTH - 1));
        pkl.push(b'.');
        let path = dir.path().join("ok.pth");
        write_zip(&path, &[("archive/data.pkl", &pkl)]);
        let mut v = load_pth(&path).unwrap();
        let mut depth = 1;
        while let PickleValue::Tuple(mut t) = v {
            match t.pop() {
                Some(inner) => {
                    depth += 1;
                    v = inner;
                }
                None => break,
            }
        }
        assert_eq!(depth, MAX_PICKLE_DEPTH);
    }

    #[test]
    fn oversized_tensors_and_entries_are_refused_by_budget() {
        let dir = tempfile::tempdir().unwrap();
        // A stride-0 view of one element claiming 2^40 elements (4 TiB).
        let p = P::default().proto().tensor("FloatStorage", "0", 1, 0, &[1 << 20, 1 << 20], &[0, 0]).op(b".");
        let err = load_err(dir.path(), "broadcast.pth", &p.0, &[("archive/data/0", &f32_bytes(&[1.0]))]);
        assert!(err.contains("refusing") && err.contains("broadcast.pth") && err.contains("budget"), "{err}");

        // A deflated storage entry that inflates to 128 MiB from ~128 KiB: refused from its
        // declared size, before inflating.
        let path = dir.path().join("deflate.pth");
        let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(false);
        let p = P::default().proto().tensor("FloatStorage", "0", 4, 0, &[4], &[1]).op(b".");
        z.start_file("archive/data.pkl", stored).unwrap();
        z.write_all(&p.0).unwrap();
        z.start_file("archive/data/0", deflated).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..128 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
        let err = format!("{:#}", load_pth(&path).unwrap_err());
        assert!(err.contains("refusing") && err.contains("deflate.pth") && err.contains("budget"), "{err}");

        // Not a regular file.
        let err = format!("{:#}", load_pth(dir.path()).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn large_dicts_assign_by_hash() {
        // 200 000 keys in one SETITEMS (a linear scan per key would take 2·10^10 comparisons),
        // then key 7 assigned again: it keeps its place and takes the new value.
        let mut p = P::default().proto().op(b"}(");
        for i in 0..200_000 {
            p = p.int(i).int(i + 1);
        }
        let p = p.op(b"u").str("k").int(1).op(b"s").int(7).int(-1).op(b"s").op(b".");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pth");
        write_zip(&path, &[("archive/data.pkl", &p.0)]);
        let PickleValue::Dict(d) = load_pth(&path).unwrap() else { panic!() };
        assert_eq!(d.len(), 200_001);
        assert_eq!(d[7], (PickleValue::Int(7), PickleValue::Int(-1)));
        assert_eq!(d[199_999], (PickleValue::Int(199_999), PickleValue::Int(200_000)));
        assert_eq!(d[200_000], (PickleValue::Str("k".into()), PickleValue::Int(1)));
    }

    #[test]
    fn memo_shares_mutable_containers() {
        // d = {}; memo[0] = d; d['a'] = [1]; result = (d, memo[0]) — both must see 'a'.
        let dir = tempfile::tempdir().unwrap();
        let p = P::default().proto().op(b"}q\x00").str("a").op(b"]").int(1).op(b"as").op(b"h\x00").op(&[0x86]).op(b".");
        let path = dir.path().join("memo.pth");
        write_zip(&path, &[("archive/data.pkl", &p.0)]);
        let v = load_pth(&path).unwrap();
        let d = PickleValue::Dict(vec![(PickleValue::Str("a".into()), PickleValue::List(vec![PickleValue::Int(1)]))]);
        assert_eq!(v, PickleValue::Tuple(vec![d.clone(), d]));
    }
}
