//! The pseudo-gradient on the wire: per tensor, in name order, either int8 blocks with one
//! f32 scale each, or raw f64 (lossless, for exactness tests). The island keeps the
//! quantization residual and adds it to its next delta (error feedback), so what int8 drops
//! in one round is sent in a later one instead of being lost.
//!
//! # Error bound
//!
//! A block of `B` values `x` with `a = max |x|` gets the scale `s`, the smallest f32 with
//! `127·s >= a`, and codes `q = round(x / s)` in `[-127, 127]`; it decodes to `q·s` (exact in
//! f64). So every element satisfies `|x − q·s| <= s/2`, up to the rounding of the one f64
//! division `x / s` (at most `|x|·2^-52`), and `s <= a/127·(1 + 2^-23)`: the error is at most
//! about `a/254` of the block's largest value. A block of zeros has scale 0 and decodes to
//! zeros exactly.
//!
//! # Wire format (version 1)
//!
//! Borsh of `{ magic "AGPG", version u16, tensors: [{ name, len u64, body }] }` where body is
//! `Raw { f64 LE bytes }` or `Int8 { block u32, f32 LE scale bytes, i8 codes }`. Decoding
//! checks the magic, version, strictly increasing names, every length against `len`, finite
//! non-negative scales and codes in `[-127, 127]`, and that no byte is left over.

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::error::{DilocoError, Result};

/// A pseudo-gradient or residual by parameter name (sorted), flattened row-major. f64, so
/// `global − delta` can reproduce f32 parameters exactly when nothing is quantized.
pub type Delta = BTreeMap<String, Vec<f64>>;

pub const MAGIC: [u8; 4] = *b"AGPG";
pub const WIRE_VERSION: u16 = 1;
/// Values per int8 block: one f32 scale per 256 bytes of codes (1.6% overhead), small enough
/// that an outlier only coarsens its own block.
pub const DEFAULT_BLOCK: u32 = 256;
/// Larger blocks are refused on decode, so a peer cannot make one scale cover a whole tensor.
pub const MAX_BLOCK: u32 = 1 << 16;

/// How a delta is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Codec {
    /// Lossless f64, 8 bytes per value: for tests and baselines.
    Raw,
    /// int8 per block of `block` values with an f32 scale per block.
    Int8 { block: u32 },
}

impl Default for Codec {
    fn default() -> Self {
        Codec::Int8 {
            block: DEFAULT_BLOCK,
        }
    }
}

#[derive(BorshSerialize, BorshDeserialize)]
struct WireDelta {
    magic: [u8; 4],
    version: u16,
    tensors: Vec<WireTensor>,
}

#[derive(BorshSerialize, BorshDeserialize)]
struct WireTensor {
    name: String,
    len: u64,
    body: WireBody,
}

#[derive(BorshSerialize, BorshDeserialize)]
enum WireBody {
    Raw {
        values: Vec<u8>,
    },
    Int8 {
        block: u32,
        scales: Vec<u8>,
        q: Vec<u8>,
    },
}

/// The scale of one block: the smallest f32 `s` with `127·s >= max |x|` (0 for zeros).
pub fn block_scale(block: &[f64]) -> Result<f32> {
    let amax = block.iter().fold(0f64, |m, x| m.max(x.abs()));
    if !amax.is_finite() {
        return Err(DilocoError::NonFinite("block".into()));
    }
    if amax == 0.0 {
        return Ok(0.0);
    }
    let mut s = (amax / 127.0) as f32;
    // Round up, so |x / s| <= 127 and no code is clamped.
    while (s as f64) * 127.0 < amax {
        s = s.next_up();
    }
    if !s.is_finite() {
        return Err(DilocoError::NonFinite("block scale".into()));
    }
    Ok(s)
}

/// Int8 codes of `x` at scale `s` (see the module's error bound).
fn quantize(x: &[f64], s: f32) -> impl Iterator<Item = i8> + '_ {
    let s = s as f64;
    x.iter().map(move |&v| {
        if s == 0.0 {
            0
        } else {
            (v / s).round().clamp(-127.0, 127.0) as i8
        }
    })
}

/// Encode `delta` as is (no error feedback); see [`ErrorFeedback::encode`] for islands.
pub fn encode(delta: &Delta, codec: Codec) -> Result<Vec<u8>> {
    encode_with(delta, codec, |_, _| {}).map(deflate)
}

/// The wire form before deflate (which [`decode`] also accepts): for tests of the format.
pub fn encode_plain(delta: &Delta, codec: Codec) -> Result<Vec<u8>> {
    encode_with(delta, codec, |_, _| {})
}

/// The envelope of a deflated delta: int8 codes of a Gaussian-like delta carry about 7.5 bits
/// of entropy per byte, so deflate's Huffman stage saves some 5% of the bytes on the wire.
pub const DEFLATED_MAGIC: [u8; 4] = *b"AGPZ";
/// The most bytes a deflated delta may inflate to (a bound against decompression bombs).
pub const MAX_INFLATED_BYTES: usize = 1 << 30;

fn deflate(plain: Vec<u8>) -> Vec<u8> {
    let packed = miniz_oxide::deflate::compress_to_vec(&plain, 6);
    let mut out = Vec::with_capacity(4 + packed.len());
    out.extend_from_slice(&DEFLATED_MAGIC);
    out.extend_from_slice(&packed);
    out
}

/// Encodes, and hands each tensor's decoded values to `decoded` (for the residual).
fn encode_with(
    delta: &Delta,
    codec: Codec,
    mut decoded: impl FnMut(&str, Vec<f64>),
) -> Result<Vec<u8>> {
    let mut tensors = Vec::with_capacity(delta.len());
    for (name, x) in delta {
        if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
            return Err(DilocoError::NonFinite(format!("{name}[{bad}]")));
        }
        let body = match codec {
            Codec::Raw => {
                decoded(name, x.clone());
                WireBody::Raw {
                    values: x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                }
            }
            Codec::Int8 { block } => {
                if block == 0 || block > MAX_BLOCK {
                    return Err(DilocoError::Setting(format!(
                        "int8 block {block} must be in 1..={MAX_BLOCK}"
                    )));
                }
                let mut scales = Vec::with_capacity(x.len().div_ceil(block as usize) * 4);
                let mut q = Vec::with_capacity(x.len());
                let mut back = Vec::with_capacity(x.len());
                for chunk in x.chunks(block as usize) {
                    let s = block_scale(chunk)?;
                    scales.extend_from_slice(&s.to_le_bytes());
                    for code in quantize(chunk, s) {
                        q.push(code as u8);
                        back.push(code as f64 * s as f64);
                    }
                }
                decoded(name, back);
                WireBody::Int8 { block, scales, q }
            }
        };
        tensors.push(WireTensor {
            name: name.clone(),
            len: x.len() as u64,
            body,
        });
    }
    borsh::to_vec(&WireDelta {
        magic: MAGIC,
        version: WIRE_VERSION,
        tensors,
    })
    .map_err(|e| DilocoError::malformed("delta", e.to_string()))
}

/// Decode bytes from a peer; every inconsistency is an error.
pub fn decode(bytes: &[u8]) -> Result<Delta> {
    let bad = |reason: String| DilocoError::malformed("delta", reason);
    // Deltas travel deflated; the plain form is accepted too.
    let inflated;
    let bytes = match bytes.strip_prefix(&DEFLATED_MAGIC) {
        Some(packed) => {
            inflated =
                miniz_oxide::inflate::decompress_to_vec_with_limit(packed, MAX_INFLATED_BYTES)
                    .map_err(|e| bad(format!("does not inflate: {e}")))?;
            &inflated[..]
        }
        None => bytes,
    };
    let wire: WireDelta = borsh::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if wire.magic != MAGIC {
        return Err(bad(format!("magic {:?}", wire.magic)));
    }
    if wire.version != WIRE_VERSION {
        return Err(bad(format!(
            "version {} (this build reads {WIRE_VERSION})",
            wire.version
        )));
    }
    let mut out = Delta::new();
    for t in wire.tensors {
        if out
            .last_key_value()
            .is_some_and(|(last, _)| *last >= t.name)
        {
            return Err(bad(format!("tensor `{}` out of order or repeated", t.name)));
        }
        let len = usize::try_from(t.len).map_err(|_| bad(format!("length {}", t.len)))?;
        let values = match t.body {
            WireBody::Raw { values } => {
                if Some(values.len()) != len.checked_mul(8) {
                    return Err(bad(format!(
                        "`{}`: {} raw bytes for {len} values",
                        t.name,
                        values.len()
                    )));
                }
                let v: Vec<f64> = values
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!("`{}`: non-finite value", t.name)));
                }
                v
            }
            WireBody::Int8 { block, scales, q } => {
                if block == 0 || block > MAX_BLOCK {
                    return Err(bad(format!("`{}`: block {block}", t.name)));
                }
                let blocks = len.div_ceil(block as usize);
                if q.len() != len || Some(scales.len()) != blocks.checked_mul(4) {
                    return Err(bad(format!(
                        "`{}`: {} codes and {} scale bytes for {len} values in blocks of {block}",
                        t.name,
                        q.len(),
                        scales.len()
                    )));
                }
                let mut v = Vec::with_capacity(len);
                for (codes, s) in q.chunks(block as usize).zip(scales.chunks_exact(4)) {
                    let s = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    if !(s.is_finite() && s >= 0.0) {
                        return Err(bad(format!("`{}`: scale {s}", t.name)));
                    }
                    for &c in codes {
                        let c = c as i8;
                        if c == i8::MIN {
                            return Err(bad(format!("`{}`: code -128", t.name)));
                        }
                        v.push(c as f64 * s as f64);
                    }
                }
                v
            }
        };
        out.insert(t.name, values);
    }
    Ok(out)
}

/// The commitment an island publishes before revealing its delta: blake3 of the bytes.
pub fn commitment(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// The island's quantization residual, added to its next delta before encoding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorFeedback {
    pub residual: Delta,
}

impl ErrorFeedback {
    /// Encode `delta + residual` and keep the new residual (what the codec dropped).
    pub fn encode(&mut self, delta: &Delta, codec: Codec) -> Result<Vec<u8>> {
        let mut sum = delta.clone();
        for (name, x) in sum.iter_mut() {
            if let Some(r) = self.residual.get(name).filter(|r| r.len() == x.len()) {
                for (x, r) in x.iter_mut().zip(r) {
                    *x += r;
                }
            }
        }
        let mut residual = Delta::new();
        let bytes = encode_with(&sum, codec, |name, back| {
            if let Some(x) = sum.get(name) {
                residual.insert(
                    name.to_string(),
                    x.iter().zip(&back).map(|(x, b)| x - b).collect(),
                );
            }
        })?;
        self.residual = residual;
        Ok(deflate(bytes))
    }

    /// The residual as raw wire bytes, for checkpoints.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(&self.residual, Codec::Raw)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self {
            residual: decode(bytes)?,
        })
    }

    /// L2 norm of the residual.
    pub fn norm(&self) -> f64 {
        norm(&self.residual)
    }
}

/// L2 norm of a delta.
pub fn norm(d: &Delta) -> f64 {
    d.values().flatten().map(|x| x * x).sum::<f64>().sqrt()
}

/// Dot product over the names both deltas share (with equal lengths).
pub fn dot(a: &Delta, b: &Delta) -> f64 {
    a.iter()
        .filter_map(|(k, x)| b.get(k).filter(|y| y.len() == x.len()).map(|y| (x, y)))
        .map(|(x, y)| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>())
        .sum()
}
