//! A byte-level pushdown matcher over a compiled [`Grammar`]: it accepts exactly the
//! prefixes of the JSON texts the grammar generates (compact, with at most
//! [`MAX_WHITESPACE`] whitespace bytes between tokens, none before or after the root value).
//! Its state is a small stack of `Copy` frames, so cloning it per trie node is cheap.

use crate::schema::{Grammar, Node, NodeId, ANY_ARRAY, ANY_MAP, NUMBER, STRING, TRUE_FALSE_NULL};

/// Most consecutive whitespace bytes between two JSON tokens (room for indentation, no room
/// for a model that would pad forever).
pub const MAX_WHITESPACE: u8 = 24;
/// Deepest nesting of open values.
pub const MAX_DEPTH: usize = 48;
/// Longest number, in bytes.
const MAX_NUMBER: u8 = 32;
/// Most exponent digits (serde_json refuses numbers past f64's range).
const MAX_EXPONENT: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    Normal,
    Escape,
    Hex(u8),
    /// `rem` continuation bytes to go; the next lies in `lo..=hi`.
    Utf8 {
        rem: u8,
        lo: u8,
        hi: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Matching a declared key: `pos` bytes in, `alive` the candidate properties.
    Key {
        pos: u16,
        alive: u64,
    },
    AfterKey {
        prop: u16,
    },
    AfterColon {
        prop: u16,
    },
    AfterValue,
    NeedKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// The root value, not started.
    Start(NodeId),
    Str(Str),
    Num {
        integer: bool,
        state: u8,
        len: u8,
        exp: u8,
    },
    Lit {
        node: NodeId,
        pos: u16,
        alive: u64,
    },
    /// An object with declared properties; `next` is the first property still allowed.
    Obj {
        node: NodeId,
        next: u16,
        phase: Phase,
        ws: u8,
    },
    /// An object with free keys.
    Map {
        node: NodeId,
        phase: Phase,
        ws: u8,
    },
    Arr {
        node: NodeId,
        count: u32,
        phase: Phase,
        ws: u8,
    },
}

enum Step {
    Consumed,
    Reject,
    /// The frame completed with this byte.
    Pop,
    /// The frame completed before this byte: hand the byte to the parent.
    PopRefeed,
    /// Consumed by a new child frame.
    Push(Frame),
    /// Start a child value of this node with the byte.
    PushValue(NodeId),
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

/// The number automaton: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
/// States: 0 begin, 1 minus, 2 zero, 3 int digits, 4 dot, 5 fraction, 6 e, 7 e sign, 8 exp.
fn num_next(state: u8, b: u8, integer: bool) -> Option<u8> {
    let digit = b.is_ascii_digit();
    match (state, b) {
        (0, b'-') => Some(1),
        (0 | 1, b'0') => Some(2),
        (0 | 1, _) if digit => Some(3),
        (3, _) if digit => Some(3),
        (2 | 3, b'.') if !integer => Some(4),
        (2 | 3 | 5, b'e' | b'E') if !integer => Some(6),
        (4 | 5, _) if digit => Some(5),
        (6, b'+' | b'-') => Some(7),
        (6..=8, _) if digit => Some(8),
        _ => None,
    }
}

fn num_accepting(state: u8) -> bool {
    matches!(state, 2 | 3 | 5 | 8)
}

fn lit_bytes(g: &Grammar, node: NodeId) -> &[Vec<u8>] {
    match g.node(node) {
        Node::Literals { bytes, .. } => bytes,
        _ => &[],
    }
}

fn lit_complete(g: &Grammar, node: NodeId, pos: u16, alive: u64) -> Option<usize> {
    lit_bytes(g, node)
        .iter()
        .enumerate()
        .find(|(i, l)| alive & (1 << i) != 0 && l.len() == pos as usize)
        .map(|(i, _)| i)
}

/// The frame a value of `node` becomes after its first byte `b`, if `b` can start it.
fn start(g: &Grammar, node: NodeId, b: u8) -> Option<Frame> {
    let open = |f: fn(NodeId) -> Frame, want: u8, node: NodeId| (b == want).then(|| f(node));
    match g.node(node) {
        Node::Any => match b {
            b'{' => start(g, ANY_MAP, b),
            b'[' => start(g, ANY_ARRAY, b),
            b'"' => start(g, STRING, b),
            b'-' | b'0'..=b'9' => start(g, NUMBER, b),
            _ => start(g, TRUE_FALSE_NULL, b),
        },
        Node::String => (b == b'"').then_some(Frame::Str(Str::Normal)),
        Node::Number | Node::Integer => {
            let integer = matches!(g.node(node), Node::Integer);
            num_next(0, b, integer).map(|state| Frame::Num {
                integer,
                state,
                len: 1,
                exp: 0,
            })
        }
        Node::Literals { bytes, .. } => {
            let alive = bytes
                .iter()
                .enumerate()
                .filter(|(_, l)| l.first() == Some(&b))
                .fold(0u64, |m, (i, _)| m | (1 << i));
            (alive != 0).then_some(Frame::Lit {
                node,
                pos: 1,
                alive,
            })
        }
        Node::Object { .. } => open(
            |node| Frame::Obj {
                node,
                next: 0,
                phase: Phase::Open,
                ws: 0,
            },
            b'{',
            node,
        ),
        Node::Map { .. } => open(
            |node| Frame::Map {
                node,
                phase: Phase::Open,
                ws: 0,
            },
            b'{',
            node,
        ),
        Node::Array { .. } => open(
            |node| Frame::Arr {
                node,
                count: 0,
                phase: Phase::Open,
                ws: 0,
            },
            b'[',
            node,
        ),
        Node::Union(alts) => alts.iter().find_map(|&a| start(g, a, b)),
    }
}

/// Whether `b` can begin a value of `node` (the compiler keeps union alternatives apart).
pub(crate) fn starts(g: &Grammar, node: NodeId, b: u8) -> bool {
    start(g, node, b).is_some()
}

fn step_str(s: &mut Str, b: u8) -> Step {
    *s = match (*s, b) {
        (Str::Normal, b'"') => return Step::Pop,
        (Str::Normal, b'\\') => Str::Escape,
        (Str::Normal, 0..=0x1f) => return Step::Reject,
        (Str::Normal, 0x20..=0x7f) => Str::Normal,
        (Str::Normal, 0xc2..=0xdf) => Str::Utf8 {
            rem: 1,
            lo: 0x80,
            hi: 0xbf,
        },
        (Str::Normal, 0xe0) => Str::Utf8 {
            rem: 2,
            lo: 0xa0,
            hi: 0xbf,
        },
        (Str::Normal, 0xed) => Str::Utf8 {
            rem: 2,
            lo: 0x80,
            hi: 0x9f,
        },
        (Str::Normal, 0xe1..=0xef) => Str::Utf8 {
            rem: 2,
            lo: 0x80,
            hi: 0xbf,
        },
        (Str::Normal, 0xf0) => Str::Utf8 {
            rem: 3,
            lo: 0x90,
            hi: 0xbf,
        },
        (Str::Normal, 0xf1..=0xf3) => Str::Utf8 {
            rem: 3,
            lo: 0x80,
            hi: 0xbf,
        },
        (Str::Normal, 0xf4) => Str::Utf8 {
            rem: 3,
            lo: 0x80,
            hi: 0x8f,
        },
        (Str::Normal, _) => return Step::Reject,
        (Str::Utf8 { rem, lo, hi }, _) if (lo..=hi).contains(&b) => {
            if rem == 1 {
                Str::Normal
            } else {
                Str::Utf8 {
                    rem: rem - 1,
                    lo: 0x80,
                    hi: 0xbf,
                }
            }
        }
        (Str::Utf8 { .. }, _) => return Step::Reject,
        (Str::Escape, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Str::Normal,
        (Str::Escape, b'u') => Str::Hex(4),
        (Str::Escape, _) => return Step::Reject,
        (Str::Hex(n), _) if b.is_ascii_hexdigit() => {
            if n == 1 {
                Str::Normal
            } else {
                Str::Hex(n - 1)
            }
        }
        (Str::Hex(_), _) => return Step::Reject,
    };
    Step::Consumed
}

/// Whitespace in a container: counts it against the budget. `None` when `b` is not
/// whitespace.
fn container_ws(ws: &mut u8, b: u8) -> Option<Step> {
    if !is_ws(b) {
        *ws = 0;
        return None;
    }
    if *ws >= MAX_WHITESPACE {
        return Some(Step::Reject);
    }
    *ws += 1;
    Some(Step::Consumed)
}

/// Candidate properties at `next`: every property up to and including the next required one.
fn key_candidates(props: &[crate::schema::Prop], next: u16) -> u64 {
    let mut m = 0u64;
    for (i, p) in props.iter().enumerate().skip(next as usize) {
        m |= 1 << i;
        if p.required {
            break;
        }
    }
    m
}

fn rest_optional(props: &[crate::schema::Prop], next: u16) -> bool {
    props.iter().skip(next as usize).all(|p| !p.required)
}

fn step(g: &Grammar, f: &mut Frame, b: u8) -> Step {
    match f {
        Frame::Start(node) => match start(g, *node, b) {
            Some(n) => {
                *f = n;
                Step::Consumed
            }
            None => Step::Reject,
        },
        Frame::Str(s) => step_str(s, b),
        Frame::Num {
            integer,
            state,
            len,
            exp,
        } => match num_next(*state, b, *integer) {
            Some(n) if *len < MAX_NUMBER && !(n == 8 && *exp >= MAX_EXPONENT) => {
                if n == 8 {
                    *exp += 1;
                }
                *state = n;
                *len += 1;
                Step::Consumed
            }
            Some(_) => Step::Reject,
            None if num_accepting(*state) => Step::PopRefeed,
            None => Step::Reject,
        },
        Frame::Lit { node, pos, alive } => {
            let p = *pos as usize;
            let next = lit_bytes(g, *node)
                .iter()
                .enumerate()
                .filter(|(i, l)| *alive & (1 << i) != 0 && l.get(p) == Some(&b))
                .fold(0u64, |m, (i, _)| m | (1 << i));
            if next != 0 {
                *alive = next;
                *pos += 1;
                Step::Consumed
            } else if lit_complete(g, *node, *pos, *alive).is_some() {
                Step::PopRefeed
            } else {
                Step::Reject
            }
        }
        Frame::Obj {
            node,
            next,
            phase,
            ws,
        } => {
            let Node::Object { props, .. } = g.node(*node) else {
                return Step::Reject;
            };
            if !matches!(phase, Phase::Key { .. }) {
                if let Some(s) = container_ws(ws, b) {
                    return s;
                }
            }
            match (*phase, b) {
                (Phase::Open | Phase::AfterValue, b'}') if rest_optional(props, *next) => Step::Pop,
                (Phase::Open | Phase::NeedKey, b'"') => {
                    let alive = key_candidates(props, *next);
                    if alive == 0 {
                        return Step::Reject;
                    }
                    *phase = Phase::Key { pos: 1, alive };
                    Step::Consumed
                }
                (Phase::Key { pos, alive }, _) => {
                    let p = pos as usize;
                    let alive = props
                        .iter()
                        .enumerate()
                        .filter(|(i, pr)| alive & (1 << i) != 0 && pr.key.get(p) == Some(&b))
                        .fold(0u64, |m, (i, _)| m | (1 << i));
                    if alive == 0 {
                        return Step::Reject;
                    }
                    // Keys are quoted strings, so none is a prefix of another: a complete
                    // key is the only one left.
                    *phase = match props
                        .iter()
                        .enumerate()
                        .find(|(i, pr)| alive & (1 << i) != 0 && pr.key.len() == p + 1)
                    {
                        Some((i, _)) => Phase::AfterKey { prop: i as u16 },
                        None => Phase::Key {
                            pos: pos + 1,
                            alive,
                        },
                    };
                    Step::Consumed
                }
                (Phase::AfterKey { prop }, b':') => {
                    *phase = Phase::AfterColon { prop };
                    Step::Consumed
                }
                (Phase::AfterColon { prop }, _) => {
                    *next = prop + 1;
                    *phase = Phase::AfterValue;
                    match props.get(prop as usize) {
                        Some(p) => Step::PushValue(p.node),
                        None => Step::Reject,
                    }
                }
                (Phase::AfterValue, b',') if (*next as usize) < props.len() => {
                    *phase = Phase::NeedKey;
                    Step::Consumed
                }
                _ => Step::Reject,
            }
        }
        Frame::Map { node, phase, ws } => {
            let Node::Map { values } = g.node(*node) else {
                return Step::Reject;
            };
            if let Some(s) = container_ws(ws, b) {
                return s;
            }
            match (*phase, b) {
                (Phase::Open | Phase::AfterValue, b'}') => Step::Pop,
                (Phase::Open | Phase::NeedKey, b'"') => {
                    *phase = Phase::AfterKey { prop: 0 };
                    Step::Push(Frame::Str(Str::Normal))
                }
                (Phase::AfterKey { .. }, b':') => {
                    *phase = Phase::AfterColon { prop: 0 };
                    Step::Consumed
                }
                (Phase::AfterColon { .. }, _) => {
                    *phase = Phase::AfterValue;
                    Step::PushValue(*values)
                }
                (Phase::AfterValue, b',') => {
                    *phase = Phase::NeedKey;
                    Step::Consumed
                }
                _ => Step::Reject,
            }
        }
        Frame::Arr {
            node,
            count,
            phase,
            ws,
        } => {
            let Node::Array { items, min, max } = g.node(*node) else {
                return Step::Reject;
            };
            if let Some(s) = container_ws(ws, b) {
                return s;
            }
            match (*phase, b) {
                (Phase::Open | Phase::AfterValue, b']') if *count >= *min => Step::Pop,
                (Phase::AfterValue, b',') if *count < *max => {
                    *phase = Phase::NeedKey;
                    Step::Consumed
                }
                (Phase::Open | Phase::NeedKey, _) if *count < *max => {
                    *count += 1;
                    *phase = Phase::AfterValue;
                    Step::PushValue(*items)
                }
                _ => Step::Reject,
            }
        }
    }
}

fn can_end(g: &Grammar, f: &Frame) -> bool {
    match *f {
        Frame::Num { state, .. } => num_accepting(state),
        Frame::Lit { node, pos, alive } => lit_complete(g, node, pos, alive).is_some(),
        _ => false,
    }
}

/// Where generation stands in the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    stack: Vec<Frame>,
}

impl Matcher {
    /// At the start of the root value.
    pub fn new(g: &Grammar) -> Matcher {
        let mut stack = Vec::with_capacity(MAX_DEPTH);
        stack.push(Frame::Start(g.root));
        Matcher { stack }
    }

    /// Feeds one byte; `false` when the grammar does not allow it here (the matcher is then
    /// in an unspecified state: feed a clone when probing).
    pub fn feed(&mut self, g: &Grammar, b: u8) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return false;
            };
            match step(g, top, b) {
                Step::Consumed => return true,
                Step::Reject => return false,
                Step::Pop => {
                    self.stack.pop();
                    return true;
                }
                Step::PopRefeed => {
                    self.stack.pop();
                }
                Step::Push(f) => return self.push(f),
                Step::PushValue(node) => {
                    return match start(g, node, b) {
                        Some(f) => self.push(f),
                        None => false,
                    }
                }
            }
        }
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            return false;
        }
        self.stack.push(f);
        true
    }

    /// Feeds bytes; `false` at the first refused one.
    pub fn feed_all(&mut self, g: &Grammar, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(g, b))
    }

    /// Whether the text so far is a whole answer (generation may end here).
    pub fn accepting(&self, g: &Grammar) -> bool {
        match self.stack.as_slice() {
            [] => true,
            [only] => can_end(g, only),
            _ => false,
        }
    }

    /// Whether nothing more may follow (the root value is closed).
    pub fn finished(&self) -> bool {
        self.stack.is_empty()
    }
}
