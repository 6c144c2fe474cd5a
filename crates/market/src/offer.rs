//! Signed provider offers: what a provider sells, at what price, for how long.

use agora_core::{codec, AccountId, Amount, Hash32, Keypair, Signature};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// The domain tag of an offer signature, so an offer signature is never valid for anything else.
/// v2: offers carry [`Features`]; a v1 offer's signature never verifies as a v2 offer.
pub const OFFER_DOMAIN: &[u8] = b"agora/market/offer/v2";
/// The domain tag of [`SignedOffer::hash`], the content id of a signed offer.
pub const SIGNED_OFFER_DOMAIN: &[u8] = b"agora/market/signed-offer/v1";
/// The longest an offer may live (`expires_ms - issued_ms`): five minutes, so a provider that
/// goes away drops out of the market quickly unless it renews.
pub const MAX_OFFER_TTL_MS: u64 = 300_000;
/// How far in the future an offer's `issued_ms` may be, to tolerate clock differences.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;
/// The largest encoded signed offer accepted, so a gossip message can't make us hold much.
pub const MAX_OFFER_BYTES: usize = 4096;
/// The longest libp2p `PeerId` accepted, in bytes.
pub const MAX_PEER_ID_BYTES: usize = 64;
/// The most multiaddrs one offer may list.
pub const MAX_ADDRS: usize = 8;
/// The longest multiaddr accepted, in bytes.
pub const MAX_ADDR_BYTES: usize = 256;
/// The longest model name accepted, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 128;
/// The longest hardware class or region accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// The request features an offer serves beyond plain text generation, as bits. Routing sends
/// a request only to offers whose features contain what it needs (a `response_format`, tools,
/// log-probabilities). Fixed size on the wire (a `u32`); bits this build does not know are
/// kept and signed but never required, so a newer provider's offer stays valid here.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    BorshSerialize,
    BorshDeserialize,
)]
pub struct Features(pub u32);

impl Features {
    /// Plain generation only.
    pub const NONE: Features = Features(0);
    /// Tool calling: the model is served for chat with tools (calls rendered into the
    /// prompt and parsed from the answer).
    pub const TOOLS: Features = Features(1);
    /// Grammar-constrained decoding (`response_format` json_object / json_schema, a required
    /// tool call): the provider masks tokens outside the signed constraint, and audits replay
    /// the same masks.
    pub const GRAMMAR: Features = Features(1 << 1);
    /// Per-token log-probabilities in the token frames.
    pub const LOGPROBS: Features = Features(1 << 2);
    /// Every feature this build knows.
    pub const ALL: Features = Features(0b111);

    /// Whether every bit of `need` is set here.
    pub fn contains(self, need: Features) -> bool {
        self.0 & need.0 == need.0
    }

    /// Both sets together.
    pub fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    /// The bits of `need` missing here.
    pub fn missing(self, need: Features) -> Features {
        Features(need.0 & !self.0)
    }

    /// The known features set here, by name (`tools`, `grammar`, `logprobs`).
    pub fn names(self) -> Vec<&'static str> {
        [
            (Features::TOOLS, "tools"),
            (Features::GRAMMAR, "grammar"),
            (Features::LOGPROBS, "logprobs"),
        ]
        .into_iter()
        .filter(|(f, _)| self.contains(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

/// What a provider sells. Prices are integer base units per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Offer {
    /// The chain (ledger) whose money pays for this offer.
    pub chain_id: u64,
    /// The provider's ledger account; it signs the offer.
    pub provider: AccountId,
    /// libp2p `PeerId` bytes (at most 64): the signature binds the network identity to the account.
    pub peer_id: Vec<u8>,
    /// Multiaddrs to dial: at most 8, each at most 256 bytes.
    pub addrs: Vec<String>,
    /// The ModelId served (hash of the model manifest).
    pub model: Hash32,
    /// Human name, e.g. `agora-shakespeare`: 1..=128 bytes of `[A-Za-z0-9._:/-]`.
    pub model_name: String,
    /// The longest context (prompt plus output tokens) served.
    pub context_len: u32,
    /// Base units per million prompt tokens.
    pub price_in: Amount,
    /// Base units per million output tokens.
    pub price_out: Amount,
    /// Hardware class, e.g. `cpu-avx2` (at most 64 bytes); verifiers of the same class audit it.
    pub hardware: String,
    /// Region label (at most 64 bytes).
    pub region: String,
    /// Concurrent requests accepted, at least 1.
    pub capacity: u32,
    /// The request features served (see [`Features`]).
    pub features: Features,
    /// Strictly increasing per provider and model: a replayed older offer is refused.
    pub seq: u64,
    /// When it was issued, unix milliseconds.
    pub issued_ms: u64,
    /// When it stops being valid, unix milliseconds:
    /// `issued_ms < expires_ms <= issued_ms + MAX_OFFER_TTL_MS`.
    pub expires_ms: u64,
}

/// An [`Offer`] with the provider's signature over it (domain [`OFFER_DOMAIN`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedOffer {
    /// The offer.
    pub offer: Offer,
    /// `offer.provider`'s signature over `signing_bytes(OFFER_DOMAIN, offer)`.
    pub sig: Signature,
}

/// Why an offer was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OfferError {
    /// The encoded signed offer is larger than [`MAX_OFFER_BYTES`].
    #[error("offer is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a Borsh-encoded signed offer.
    #[error("offer does not decode: {0}")]
    Decode(String),
    /// The signature does not verify for `offer.provider`.
    #[error("offer signature does not verify for provider {provider}")]
    BadSignature {
        /// The account that should have signed.
        provider: AccountId,
    },
    /// `peer_id` is longer than [`MAX_PEER_ID_BYTES`].
    #[error("peer id is {len} bytes, more than the {max} allowed")]
    PeerIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_ADDRS`] addresses.
    #[error("offer lists {count} addresses, more than the {max} allowed")]
    TooManyAddrs {
        /// How many were listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text field is too long.
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text field holds a control character.
    #[error("{field} contains a control character")]
    ControlCharacter {
        /// Which field.
        field: &'static str,
    },
    /// The model name is empty, too long or uses a character outside `[A-Za-z0-9._:/-]`.
    #[error("model name {0:?} must be 1..=128 bytes of [A-Za-z0-9._:/-]")]
    BadModelName(String),
    /// Capacity is zero: the offer could never be chosen.
    #[error("capacity must be at least 1")]
    ZeroCapacity,
    /// `expires_ms` is not after `issued_ms`.
    #[error("offer expires at {expires_ms} ms, not after it was issued at {issued_ms} ms")]
    BadLifetime {
        /// When it was issued.
        issued_ms: u64,
        /// When it expires.
        expires_ms: u64,
    },
    /// The offer lives longer than [`MAX_OFFER_TTL_MS`].
    #[error("offer lives {ttl_ms} ms, more than the {max_ms} ms allowed")]
    TtlTooLong {
        /// `expires_ms - issued_ms`.
        ttl_ms: u64,
        /// The limit.
        max_ms: u64,
    },
    /// The offer has expired (`expires_ms <= now`).
    #[error("offer expired at {expires_ms} ms (now {now_ms} ms)")]
    Expired {
        /// When it expired.
        expires_ms: u64,
        /// The time it was checked at.
        now_ms: u64,
    },
    /// The offer was issued more than [`MAX_CLOCK_SKEW_MS`] in the future.
    #[error("offer issued at {issued_ms} ms, too far after now ({now_ms} ms)")]
    FromTheFuture {
        /// When it says it was issued.
        issued_ms: u64,
        /// The time it was checked at.
        now_ms: u64,
    },
    /// The offer is for another chain than the book's.
    #[error("offer is for chain {got}, expected chain {expected}")]
    WrongChain {
        /// The book's chain.
        expected: u64,
        /// The offer's chain.
        got: u64,
    },
    /// The offer's `seq` is not greater than the last one accepted from this provider for
    /// this model: a replay or a duplicate.
    #[error(
        "offer seq {seq} is not above {stored}, the last accepted for this provider and model"
    )]
    StaleSeq {
        /// The offer's seq.
        seq: u64,
        /// The last accepted seq.
        stored: u64,
    },
    /// The provider already has offers for as many models as one provider may.
    #[error("provider already offers {max} models, the most one provider may")]
    TooManyModels {
        /// The limit ([`crate::MAX_MODELS_PER_PROVIDER`]).
        max: usize,
    },
    /// The book remembers as many providers as it may; a new one waits for room.
    #[error("the offer book already holds {max} providers")]
    BookFull {
        /// The limit ([`crate::book::DEFAULT_MAX_PROVIDERS`] unless set).
        max: usize,
    },
}

impl Offer {
    /// Signs the offer with `key` (which should be `provider`'s key; a different key makes an
    /// offer that fails [`SignedOffer::verify`]).
    pub fn sign(self, key: &Keypair) -> SignedOffer {
        let sig = key.sign(OFFER_DOMAIN, &self);
        SignedOffer { offer: self, sig }
    }

    /// Checks sizes, text and lifetime, but not the signature nor any clock.
    pub fn check_shape(&self) -> Result<(), OfferError> {
        if self.peer_id.len() > MAX_PEER_ID_BYTES {
            return Err(OfferError::PeerIdTooLong {
                len: self.peer_id.len(),
                max: MAX_PEER_ID_BYTES,
            });
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(OfferError::TooManyAddrs {
                count: self.addrs.len(),
                max: MAX_ADDRS,
            });
        }
        for a in &self.addrs {
            check_text("addr", a, MAX_ADDR_BYTES)?;
        }
        if !valid_model_name(&self.model_name) {
            return Err(OfferError::BadModelName(
                self.model_name.chars().take(MAX_MODEL_NAME_BYTES).collect(),
            ));
        }
        check_text("hardware", &self.hardware, MAX_LABEL_BYTES)?;
        check_text("region", &self.region, MAX_LABEL_BYTES)?;
        if self.capacity == 0 {
            return Err(OfferError::ZeroCapacity);
        }
        if self.expires_ms <= self.issued_ms {
            return Err(OfferError::BadLifetime {
                issued_ms: self.issued_ms,
                expires_ms: self.expires_ms,
            });
        }
        let ttl_ms = self.expires_ms - self.issued_ms;
        if ttl_ms > MAX_OFFER_TTL_MS {
            return Err(OfferError::TtlTooLong {
                ttl_ms,
                max_ms: MAX_OFFER_TTL_MS,
            });
        }
        Ok(())
    }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), OfferError> {
    if s.len() > max {
        return Err(OfferError::FieldTooLong {
            field,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(OfferError::ControlCharacter { field });
    }
    Ok(())
}

/// True when `name` is 1..=128 bytes of `[A-Za-z0-9._:/-]`, the form a model name must take.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MODEL_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

impl SignedOffer {
    /// Checks the size limit, the shape ([`Offer::check_shape`]) and the signature by
    /// `offer.provider` under [`OFFER_DOMAIN`]. Clock checks belong to
    /// [`crate::OfferBook::insert`], which knows the time.
    pub fn verify(&self) -> Result<(), OfferError> {
        let size = self.encoded_len();
        if size > MAX_OFFER_BYTES {
            return Err(OfferError::TooLarge {
                size,
                max: MAX_OFFER_BYTES,
            });
        }
        self.offer.check_shape()?;
        self.offer
            .provider
            .verify(OFFER_DOMAIN, &self.offer, &self.sig)
            .map_err(|_| OfferError::BadSignature {
                provider: self.offer.provider,
            })
    }

    /// The Borsh encoding (the wire form on gossip).
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes the Borsh form. Refuses more than [`MAX_OFFER_BYTES`] before decoding, and
    /// trailing bytes; never panics. It does not verify: call [`SignedOffer::verify`] or
    /// [`crate::OfferBook::insert`].
    pub fn from_bytes(b: &[u8]) -> Result<SignedOffer, OfferError> {
        if b.len() > MAX_OFFER_BYTES {
            return Err(OfferError::TooLarge {
                size: b.len(),
                max: MAX_OFFER_BYTES,
            });
        }
        borsh::from_slice(b).map_err(|e| OfferError::Decode(e.to_string()))
    }

    /// The content id of the signed offer: BLAKE3 under [`SIGNED_OFFER_DOMAIN`].
    pub fn hash(&self) -> Hash32 {
        codec::hash(SIGNED_OFFER_DOMAIN, self)
    }

    /// The length of [`SignedOffer::to_bytes`], computed without allocating.
    pub fn encoded_len(&self) -> usize {
        // Counting bytes cannot fail; usize::MAX makes a failure read as "too large".
        borsh::object_length(self).unwrap_or(usize::MAX)
    }
}
