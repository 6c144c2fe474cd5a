//! Token masks: which tokens of a vocabulary may come next under a grammar.
//!
//! The vocabulary's byte strings are arranged in a trie once per model; a mask walks the
//! trie from the matcher's state, cloning the state per trie edge into a buffer reused at
//! each depth, and prunes a whole subtree at the first refused byte. Only integer work, so
//! provider and verifier compute the same bits.

use crate::matcher::Matcher;
use crate::schema::Grammar;

#[derive(Debug, Clone, Default)]
struct TrieNode {
    /// (byte, child index), sorted by byte.
    children: Vec<(u8, u32)>,
    /// Tokens whose bytes end here.
    tokens: Vec<u32>,
}

/// A vocabulary's token bytes, arranged for masking.
#[derive(Debug, Clone)]
pub struct Vocab {
    size: usize,
    /// Bytes of each token; `None` for control tokens, which a constraint never allows
    /// (except `stop` tokens when the answer is whole).
    bytes: Vec<Option<Vec<u8>>>,
    stop: Vec<u32>,
    nodes: Vec<TrieNode>,
    max_len: usize,
}

/// Which tokens are allowed, one bit per token id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    words: Vec<u64>,
}

impl Mask {
    fn empty(size: usize) -> Mask {
        Mask {
            words: vec![0; size.div_ceil(64)],
        }
    }

    fn set(&mut self, t: u32) {
        if let Some(w) = self.words.get_mut(t as usize / 64) {
            *w |= 1 << (t % 64);
        }
    }

    /// Whether token `t` is allowed.
    pub fn allows(&self, t: u32) -> bool {
        self.words
            .get(t as usize / 64)
            .is_some_and(|w| w & (1 << (t % 64)) != 0)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Sets every refused token's logit to minus infinity.
    pub fn apply(&self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if !self.allows(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

impl Vocab {
    /// `bytes[id]` is token `id`'s bytes (`None` for control tokens); `stop` are the tokens
    /// that end an answer.
    pub fn new(bytes: Vec<Option<Vec<u8>>>, stop: Vec<u32>) -> Vocab {
        let mut nodes = vec![TrieNode::default()];
        let mut max_len = 0;
        for (id, b) in bytes.iter().enumerate() {
            let Some(b) = b else { continue };
            if b.is_empty() || stop.contains(&(id as u32)) {
                continue;
            }
            max_len = max_len.max(b.len());
            let mut at = 0usize;
            for &byte in b {
                at = match nodes[at].children.binary_search_by_key(&byte, |c| c.0) {
                    Ok(i) => nodes[at].children[i].1 as usize,
                    Err(i) => {
                        let child = nodes.len();
                        nodes.push(TrieNode::default());
                        nodes[at].children.insert(i, (byte, child as u32));
                        child
                    }
                };
            }
            nodes[at].tokens.push(id as u32);
        }
        Vocab {
            size: bytes.len(),
            bytes,
            stop,
            nodes,
            max_len,
        }
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The tokens that end an answer.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }

    /// The bytes of token `t` (`None` for control tokens and ids outside the vocabulary).
    pub fn token_bytes(&self, t: u32) -> Option<&[u8]> {
        self.bytes.get(t as usize).and_then(|b| b.as_deref())
    }

    /// The tokens allowed after `state`: those whose bytes the grammar accepts, and the stop
    /// tokens when the text so far is a whole answer.
    pub fn mask(&self, g: &Grammar, state: &Matcher) -> Mask {
        let mut mask = Mask::empty(self.size);
        if state.accepting(g) {
            for &t in &self.stop {
                mask.set(t);
            }
        }
        if !state.finished() {
            let mut scratch = vec![state.clone(); self.max_len + 1];
            self.walk(g, 0, 0, &mut scratch, &mut mask);
        }
        mask
    }

    fn walk(
        &self,
        g: &Grammar,
        node: usize,
        depth: usize,
        scratch: &mut [Matcher],
        mask: &mut Mask,
    ) {
        for &(byte, child) in &self.nodes[node].children {
            let accepted = {
                let (done, rest) = scratch.split_at_mut(depth + 1);
                rest[0].clone_from(&done[depth]);
                rest[0].feed(g, byte)
            };
            if !accepted {
                continue;
            }
            let c = &self.nodes[child as usize];
            for &t in &c.tokens {
                mask.set(t);
            }
            if !c.children.is_empty() {
                // Deeper levels use deeper buffers only; this level's parent stays intact.
                self.walk(g, child as usize, depth + 1, scratch, mask);
            }
        }
    }

    /// Advances `state` over token `t`: `false` when the grammar refuses it (a stop token is
    /// accepted only when the answer is whole, and leaves the state as it was).
    pub fn advance(&self, g: &Grammar, state: &mut Matcher, t: u32) -> bool {
        if self.stop.contains(&t) {
            return state.accepting(g);
        }
        match self.token_bytes(t) {
            Some(b) if !b.is_empty() => state.feed_all(g, b),
            _ => false,
        }
    }
}

/// GPT-2's byte-level alphabet, reversed: the byte each vocabulary character stands for.
pub fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let mut bytes: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    bytes
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

/// The bytes a byte-level BPE token string stands for; `None` when a character is outside
/// the alphabet (an added token written as plain text).
pub fn byte_level_bytes(
    token: &str,
    decoder: &std::collections::HashMap<char, u8>,
) -> Option<Vec<u8>> {
    token.chars().map(|c| decoder.get(&c).copied()).collect()
}
