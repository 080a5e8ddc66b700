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
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;
use zip::ZipArchive;

/// A loaded pickle value. Tensors are materialised row-major whatever their strides.
#[derive(Clone, Debug, PartialEq)]
pub enum PickleValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PickleValue>),
    Tuple(Vec<PickleValue>),
    /// Dicts and `OrderedDict`s, in insertion order.
    Dict(Vec<(PickleValue, PickleValue)>),
    Tensor(HostTensor),
    /// An instance of an allow-listed non-container class (`torch.device`,
    /// `argparse.Namespace`: constructor `args` and `BUILD` `state`), or a bare reference to
    /// an allow-listed global (`args` empty, `state` None).
    Object { class: String, args: Vec<PickleValue>, state: Option<Box<PickleValue>> },
}

impl PickleValue {
    /// The value under string key `key` of a dict (None for other values or a missing key).
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        match self {
            PickleValue::Dict(items) => items.iter().find(|(k, _)| matches!(k, PickleValue::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            PickleValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            PickleValue::Int(i) => Some(*i),
            _ => None,
        }
    }

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

/// A global outside the allow-list (kept as its own type so the message reaches the caller
/// without the opcode context around it).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

struct Storage {
    elem: Elem,
    bytes: Vec<u8>,
}

struct Obj {
    class: Global,
    args: Vec<V>,
    state: Option<V>,
}

/// The unpickler's working values. Lists, dicts and objects are shared and mutable as in
/// Python: the memo and the stack may hold the same dict while SETITEMS fills it.
#[derive(Clone)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(Rc<RefCell<Vec<V>>>),
    Tuple(Rc<[V]>),
    Dict(Rc<RefCell<Vec<(V, V)>>>),
    Tensor(Rc<HostTensor>),
    Global(Global),
    Storage(Rc<Storage>),
    Object(Rc<RefCell<Obj>>),
}

impl V {
    fn kind(&self) -> &'static str {
        match self {
            V::None => "None",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::Float(_) => "float",
            V::Str(_) => "str",
            V::Bytes(_) => "bytes",
            V::List(_) => "list",
            V::Tuple(_) => "tuple",
            V::Dict(_) => "dict",
            V::Tensor(_) => "tensor",
            V::Global(_) => "global",
            V::Storage(_) => "storage",
            V::Object(_) => "object",
        }
    }

    /// Key equality for dict assignment (scalars and tuples of scalars, as Python hashes).
    fn key_eq(&self, other: &V) -> bool {
        match (self, other) {
            (V::None, V::None) => true,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Int(a), V::Int(b)) => a == b,
            (V::Float(a), V::Float(b)) => a == b,
            (V::Str(a), V::Str(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::Tuple(a), V::Tuple(b)) => a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.key_eq(y)),
            _ => false,
        }
    }

    fn int(&self, what: &str) -> Result<i64> {
        match self {
            V::Int(i) => Ok(*i),
            V::Bool(b) => Ok(*b as i64),
            v => bail!("{what}: expected int, found {}", v.kind()),
        }
    }

    fn usize_tuple(&self, what: &str) -> Result<Vec<usize>> {
        let items: Vec<V> = match self {
            V::Tuple(t) => t.to_vec(),
            V::List(l) => l.borrow().clone(),
            v => bail!("{what}: expected tuple, found {}", v.kind()),
        };
        items.iter().map(|x| usize::try_from(x.int(what)?).map_err(|_| anyhow!("{what}: negative value"))).collect()
    }
}

fn dict_set(d: &RefCell<Vec<(V, V)>>, k: V, v: V) {
    let mut d = d.borrow_mut();
    match d.iter_mut().find(|(old, _)| old.key_eq(&k)) {
        Some(slot) => slot.1 = v,
        None => d.push((k, v)),
    }
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
fn gather(storage: &Storage, offset: usize, size: &[usize], stride: &[usize]) -> Result<HostTensor> {
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
    zip: &'a mut ZipArchive<R>,
    prefix: String,
    storages: HashMap<String, Rc<Storage>>,
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
        Ok(V::Str(std::str::from_utf8(b).context("string is not UTF-8")?.into()))
    }

    fn pop(&mut self) -> Result<V> {
        self.stack.pop().context("pickle stack underflow")
    }

    fn top(&self) -> Result<&V> {
        self.stack.last().context("pickle stack underflow")
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
            Some(g) => Ok(V::Global(g)),
            None => Err(Refused(format!("refusing pickle global {module}.{name} in {}: only tensors and plain containers are loaded", self.file)).into()),
        }
    }

    fn storage(&mut self, pid: V) -> Result<V> {
        let V::Tuple(t) = &pid else { bail!("persistent id is a {}, expected a tuple", pid.kind()) };
        let (tag, ty, key) = match &t[..] {
            [V::Str(tag), ty, V::Str(key), _location, _numel] => (tag, ty, key),
            _ => bail!("unsupported persistent id (expected ('storage', type, key, location, numel))"),
        };
        if &**tag != "storage" {
            bail!("unsupported persistent id kind {tag:?}");
        }
        let V::Global(Global::Storage(elem)) = ty else { bail!("persistent id storage type is a {}, not a torch storage class", ty.kind()) };
        let numel = usize::try_from(t[4].int("storage numel")?).context("negative storage numel")?;
        if let Some(s) = self.storages.get(&**key) {
            if s.elem != *elem {
                bail!("storage {key} used with two element types");
            }
            return Ok(V::Storage(s.clone()));
        }
        let entry = format!("{}data/{key}", self.prefix);
        let mut f = self.zip.by_name(&entry).with_context(|| format!("missing storage entry {entry}"))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).with_context(|| format!("entry {entry} is truncated or corrupt"))?;
        let need = numel.checked_mul(elem.size()).context("storage size overflows")?;
        if bytes.len() < need {
            bail!("entry {entry} holds {} bytes, its storage needs {need} (truncated or corrupt)", bytes.len());
        }
        let s = Rc::new(Storage { elem: *elem, bytes });
        self.storages.insert(key.to_string(), s.clone());
        Ok(V::Storage(s))
    }

    fn call(&mut self, g: Global, args: &[V]) -> Result<V> {
        match g {
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                let ([V::Storage(s), _, _, _, _, _] | [V::Storage(s), _, _, _, _, _, _]) = args else {
                    bail!("_rebuild_tensor_v2: expected (storage, offset, size, stride, requires_grad, hooks)")
                };
                let offset = usize::try_from(args[1].int("storage_offset")?).context("negative storage offset")?;
                let size = args[2].usize_tuple("size")?;
                let stride = args[3].usize_tuple("stride")?;
                Ok(V::Tensor(Rc::new(gather(s, offset, &size, &stride)?)))
            }
            Global::RebuildParameter => match args {
                [V::Tensor(t), ..] => Ok(V::Tensor(t.clone())),
                _ => bail!("_rebuild_parameter: expected a tensor"),
            },
            Global::OrderedDict => {
                let d = Rc::new(RefCell::new(Vec::new()));
                match args {
                    [] => {}
                    [V::List(items)] => {
                        for it in items.borrow().iter() {
                            match it {
                                V::Tuple(kv) if kv.len() == 2 => dict_set(&d, kv[0].clone(), kv[1].clone()),
                                _ => bail!("OrderedDict: items must be (key, value) pairs"),
                            }
                        }
                    }
                    _ => bail!("OrderedDict: unsupported arguments"),
                }
                Ok(V::Dict(d))
            }
            Global::CodecsEncode => match args {
                [V::Str(s), V::Str(enc)] if &**enc == "latin1" || &**enc == "latin-1" => {
                    let b: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    Ok(V::Bytes(b.context("_codecs.encode: non-latin1 character")?.into()))
                }
                _ => bail!("_codecs.encode: only (str, 'latin1') is supported"),
            },
            Global::Device | Global::Namespace => Ok(V::Object(Rc::new(RefCell::new(Obj { class: g, args: args.to_vec(), state: None })))),
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
                let v = self.top()?.clone();
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
                self.stack.push(V::Bytes(b.into()));
            }
            b'T' | b'U' => {
                // Python 2 str: bytes, taken as latin-1 text as Python 3's default does.
                let n = if op == b'T' { self.u32()? } else { self.u8()? as usize };
                let b = self.take(n)?;
                self.stack.push(V::Str(b.iter().map(|&c| c as char).collect::<String>().into()));
            }
            b'}' => self.stack.push(V::Dict(Rc::default())),
            b']' => self.stack.push(V::List(Rc::default())),
            b')' => self.stack.push(V::Tuple(Rc::from(Vec::new()))),
            b'd' => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    bail!("DICT with an odd number of items");
                }
                let d: Rc<RefCell<Vec<(V, V)>>> = Rc::default();
                for kv in items.chunks(2) {
                    dict_set(&d, kv[0].clone(), kv[1].clone());
                }
                self.stack.push(V::Dict(d));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(V::List(Rc::new(RefCell::new(items))));
            }
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(V::Tuple(items.into()));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    bail!("pickle stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(V::Tuple(items.into()));
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
                let V::Dict(d) = self.top()? else { bail!("SETITEM on a {}", self.top()?.kind()) };
                let d = d.clone();
                for kv in items.chunks(2) {
                    dict_set(&d, kv[0].clone(), kv[1].clone());
                }
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                let V::List(l) = self.top()? else { bail!("APPEND on a {}", self.top()?.kind()) };
                l.borrow_mut().extend(items);
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => self.u8()? as u32,
                    b'r' => self.u32()? as u32,
                    _ => self.memo.len() as u32,
                };
                let v = self.top()?.clone();
                self.memo.insert(idx, v);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' { self.u8()? as u32 } else { self.u32()? as u32 };
                let v = self.memo.get(&idx).with_context(|| format!("memo entry {idx} missing"))?.clone();
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
                let (V::Str(m), V::Str(n)) = (&module, &name) else { bail!("STACK_GLOBAL needs two strings") };
                let g = self.global(m, n)?;
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
                let V::Tuple(args) = args else { bail!("call arguments are a {}, not a tuple", args.kind()) };
                let V::Global(g) = callable else { bail!("cannot call a {}", callable.kind()) };
                let v = self.call(g, &args)?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                match self.top()? {
                    // OrderedDict attributes (a state dict's `_metadata`) and tensor state
                    // (`requires_grad` hooks) carry nothing we keep.
                    V::Dict(_) | V::Tensor(_) => {}
                    V::Object(o) => o.borrow_mut().state = Some(state),
                    v => bail!("BUILD on a {}", v.kind()),
                }
            }
            _ => bail!("unsupported pickle opcode 0x{op:02x}"),
        }
        Ok(())
    }
}

/// Converts the working graph to owned values; bounded depth so a cyclic or absurdly
/// nested pickle fails instead of overflowing the stack.
fn convert(v: &V, depth: usize) -> Result<PickleValue> {
    if depth > 512 {
        bail!("pickle nests deeper than 512 levels (or is cyclic)");
    }
    let c = |x: &V| convert(x, depth + 1);
    Ok(match v {
        V::None => PickleValue::None,
        V::Bool(b) => PickleValue::Bool(*b),
        V::Int(i) => PickleValue::Int(*i),
        V::Float(f) => PickleValue::Float(*f),
        V::Str(s) => PickleValue::Str(s.to_string()),
        V::Bytes(b) => PickleValue::Bytes(b.to_vec()),
        V::List(l) => PickleValue::List(l.borrow().iter().map(c).collect::<Result<_>>()?),
        V::Tuple(t) => PickleValue::Tuple(t.iter().map(c).collect::<Result<_>>()?),
        V::Dict(d) => PickleValue::Dict(d.borrow().iter().map(|(k, v)| Ok((c(k)?, c(v)?))).collect::<Result<_>>()?),
        V::Tensor(t) => PickleValue::Tensor((**t).clone()),
        V::Global(g) => PickleValue::Object { class: g.class_name(), args: vec![], state: None },
        V::Storage(_) => bail!("a bare storage outside a tensor is not supported"),
        V::Object(o) => {
            let o = o.borrow();
            PickleValue::Object {
                class: o.class.class_name(),
                args: o.args.iter().map(c).collect::<Result<_>>()?,
                state: o.state.as_ref().map(|s| c(s).map(Box::new)).transpose()?,
            }
        }
    })
}

/// Loads the object a `torch.save` zip archive holds. Only tensors, storages and plain
/// containers are rebuilt; any other pickle global is refused by name.
pub fn load_pth(path: &Path) -> Result<PickleValue> {
    let file = path.display().to_string();
    let f = File::open(path).with_context(|| format!("cannot open {file}"))?;
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
    if let Ok(mut bo) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        bo.read_to_string(&mut s).with_context(|| format!("{file}: byteorder entry is truncated or corrupt"))?;
        if s.trim() != "little" {
            bail!("{file}: byte order {s:?} is not supported (only little-endian checkpoints)");
        }
    }
    let mut data = Vec::new();
    zip.by_name(pkl)
        .map_err(anyhow::Error::from)
        .and_then(|mut e| Ok(e.read_to_end(&mut data)?))
        .with_context(|| format!("{file}: entry {pkl} is truncated or corrupt"))?;
    let mut u = Unpickler {
        data: &data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        zip: &mut zip,
        prefix,
        storages: HashMap::new(),
        file: &file,
    };
    let root = u.run().map_err(|e| match e.downcast_ref::<Refused>() {
        // The refusal already names the global and the file: report it as it is.
        Some(r) => anyhow!("{r}"),
        None => e.context(format!("{file}: cannot load {pkl}")),
    })?;
    // Drop the other handles so unshared tensors convert without a second copy alive.
    drop(u);
    convert(&root, 0).with_context(|| format!("{file}: cannot load {pkl}"))
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
