//! The offer book and the reverse auction.
//!
//! Offers are indexed by model; within a model, the fields the auction reads live in a compact
//! `Hot` row next to the full signed offer, and each provider's measured service quality is
//! folded into one precomputed factor, so an auction is one linear pass over the model's rows
//! with a small top-k buffer and no allocation per offer.

use crate::offer::{Features, OfferError, SignedOffer, MAX_CLOCK_SKEW_MS, MAX_OFFER_TTL_MS};
use agora_core::{AccountId, Amount, Hash32};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::HashMap;

/// Reputation assumed for a provider nobody has audited yet.
pub const DEFAULT_REPUTATION: f64 = 0.5;
/// Added to reputation before dividing the score by it: reputation 0 doubles the score against
/// the default, reputation 1 cuts it to two thirds (a 1.5x edge on price).
pub const REPUTATION_BASE: f64 = 0.5;
/// Latency assumed for a provider whose first-token latency has not been measured yet.
pub const UNKNOWN_LATENCY_MS: f64 = 500.0;
/// The latency penalty is `1 + latency / LATENCY_SCALE_MS`: each second of first-token latency
/// costs as much as the whole price again.
pub const LATENCY_SCALE_MS: f64 = 1000.0;
/// Weight of a new latency sample in the moving average.
pub const LATENCY_ALPHA: f64 = 0.3;
/// Latency samples are clamped to this (ten minutes); non-finite samples are ignored.
pub const MAX_LATENCY_MS: f64 = 600_000.0;
/// The load penalty is `1 + LOAD_WEIGHT * load / capacity`.
pub const LOAD_WEIGHT: f64 = 0.5;
/// Weight of one outcome (1 for failure, 0 for success) in the recent failure rate.
pub const FAILURE_ALPHA: f64 = 0.2;
/// The failure rate is capped here, so the failure penalty `1 / (1 - rate)` is at most 20.
pub const MAX_FAILURE_RATE: f64 = 0.95;
/// The most models one provider may have offers (or unexpired replay marks) for at once.
pub const MAX_MODELS_PER_PROVIDER: usize = 256;
/// Most providers a book remembers unless [`OfferBook::with_max_providers`] says otherwise:
/// gossip from fresh keys cannot grow it without end.
pub const DEFAULT_MAX_PROVIDERS: usize = 4096;

/// Up to this `k`, the auction keeps its top k in a sorted buffer; above it, it selects.
const SMALL_K: usize = 32;

/// The smallest service factor there can be (no latency, no failures, reputation 1). Every
/// score is at least `cost * SERVICE_FLOOR` (rounding is monotone), so the auction skips an
/// offer whose cost alone rules it out without reading its provider's numbers.
const SERVICE_FLOOR: f64 = 1.0 / (REPUTATION_BASE + 1.0);

/// The score from its parts: cost times the load penalty times the service factor.
#[inline]
fn finish(cost: f64, load: u32, capacity: u32, service: f64) -> f64 {
    let load_pen = 1.0 + LOAD_WEIGHT * f64::from(load) / f64::from(capacity.max(1));
    cost * load_pen * service
}

/// A buyer's request for a provider: the model, price limits, the expected size of the job,
/// and constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bid {
    /// The ModelId wanted.
    pub model: Hash32,
    /// The highest acceptable price per million prompt tokens; `None` for no limit.
    pub max_price_in: Option<Amount>,
    /// The highest acceptable price per million output tokens; `None` for no limit.
    pub max_price_out: Option<Amount>,
    /// Expected prompt tokens; weighs `price_in` in the score.
    pub expected_prompt_tokens: u64,
    /// Expected output tokens; weighs `price_out` in the score.
    pub expected_output_tokens: u64,
    /// Providers not to choose (for example ones that just failed this request).
    pub exclude: Vec<AccountId>,
    /// Only offers of exactly this hardware class, if given.
    pub hardware: Option<String>,
    /// Only offers of exactly this region, if given.
    pub region: Option<String>,
    /// Only offers serving all of these request features (tools, grammar, logprobs).
    pub features: Features,
}

impl Bid {
    /// A bid for `model` with no limits, no constraints and no expected token counts.
    pub fn new(model: Hash32) -> Bid {
        Bid {
            model,
            ..Bid::default()
        }
    }
}

/// An offer the auction chose, with its score (lower is better).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The chosen signed offer.
    pub offer: SignedOffer,
    /// Its score for the bid; see [`OfferBook::auction`].
    pub score: f64,
}

impl Candidate {
    /// The provider account of the chosen offer.
    pub fn provider(&self) -> AccountId {
        self.offer.offer.provider
    }
}

/// One live model as listed to clients (for `/v1/models`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    /// The ModelId.
    pub model: Hash32,
    /// The name most live offers give it (ties: the smallest name).
    pub model_name: String,
    /// The longest context any live offer serves.
    pub context_len: u32,
    /// How many live offers there are for it.
    pub providers: usize,
    /// The lowest live prompt price per million tokens.
    pub min_price_in: Amount,
    /// The lowest live output price per million tokens.
    pub min_price_out: Amount,
}

/// What the gateway has measured of one provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProviderStats {
    /// Requests in flight now.
    pub load: u32,
    /// Moving average of first-token latency, if any was measured.
    pub latency_ms: Option<f64>,
    /// Failures recorded in total.
    pub failures: u64,
    /// Successes recorded in total.
    pub successes: u64,
    /// Reputation in `[0, 1]` ([`DEFAULT_REPUTATION`] until set).
    pub reputation: f64,
}

/// The fields of one offer that the auction reads, packed into 40 bytes so that 10,000 rows
/// stay in a core's L2 cache.
#[derive(Debug, Clone)]
struct Hot {
    expires_ms: u64,
    /// `price_in`, or [`BIG`] when it does not fit (then the full offer has it).
    price_in: u64,
    /// `price_out`, or [`BIG`] when it does not fit.
    price_out: u64,
    capacity: u32,
    /// The provider's slot in the book's provider tables.
    slot: u32,
    /// Interned hardware class (see [`Labels`]).
    hardware: u32,
    /// Interned region.
    region: u32,
}

/// Marks a price of `u64::MAX` base units or more in a [`Hot`] row: read the exact one.
const BIG: u64 = u64::MAX;

fn narrow(p: Amount) -> u64 {
    u64::try_from(p.units()).unwrap_or(BIG)
}

/// The offers for one model: parallel rows of hot fields and full offers.
#[derive(Debug, Default)]
struct ModelBook {
    hot: Vec<Hot>,
    cold: Vec<SignedOffer>,
    pos: HashMap<AccountId, usize>,
}

impl ModelBook {
    /// Removes row `i` (swap-remove), keeping `pos` right; returns the removed offer.
    fn remove_at(&mut self, i: usize) -> Option<SignedOffer> {
        if i >= self.hot.len() || i >= self.cold.len() {
            return None;
        }
        self.hot.swap_remove(i);
        let removed = self.cold.swap_remove(i);
        self.pos.remove(&removed.offer.provider);
        if let Some(moved) = self.cold.get(i) {
            self.pos.insert(moved.offer.provider, i);
        }
        Some(removed)
    }
}

/// The per-provider numbers the auction reads, packed together.
#[derive(Debug, Clone, Copy)]
struct Live {
    load: u32,
    /// latency penalty * failure penalty / reputation factor.
    service: f64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            load: 0,
            service: service_factor(None, 0.0, DEFAULT_REPUTATION),
        }
    }
}

/// The highest seq accepted from a provider for a model, kept after the offer goes so that
/// an older offer can't be replayed while it could still be live.
#[derive(Debug, Clone)]
struct Mark {
    model: Hash32,
    seq: u64,
    /// Until when an older offer could still be live: the latest `issued_ms` accepted plus
    /// [`MAX_OFFER_TTL_MS`] (an older offer was issued no later, so it has expired by then).
    keep_until_ms: u64,
    stored: bool,
}

/// Everything known about one provider account.
#[derive(Debug, Clone)]
struct Slot {
    account: AccountId,
    in_use: bool,
    marks: Vec<Mark>,
    latency_ms: Option<f64>,
    failures: u64,
    successes: u64,
    failure_rate: f64,
    reputation: f64,
    reputation_set: bool,
}

impl Slot {
    fn new(account: AccountId) -> Slot {
        Slot {
            account,
            in_use: true,
            marks: Vec::new(),
            latency_ms: None,
            failures: 0,
            successes: 0,
            failure_rate: 0.0,
            reputation: DEFAULT_REPUTATION,
            reputation_set: false,
        }
    }

    fn pristine(&self) -> bool {
        self.latency_ms.is_none()
            && self.failures == 0
            && self.successes == 0
            && !self.reputation_set
    }

    fn service(&self) -> f64 {
        service_factor(self.latency_ms, self.failure_rate, self.reputation)
    }
}

/// `(1 + latency / LATENCY_SCALE_MS) / (1 - failure_rate) / (REPUTATION_BASE + reputation)`.
fn service_factor(latency_ms: Option<f64>, failure_rate: f64, reputation: f64) -> f64 {
    let lat = latency_ms.unwrap_or(UNKNOWN_LATENCY_MS).max(0.0);
    let latency_pen = 1.0 + lat / LATENCY_SCALE_MS;
    let failure_pen = 1.0 / (1.0 - failure_rate.clamp(0.0, MAX_FAILURE_RATE));
    latency_pen * failure_pen / (REPUTATION_BASE + reputation.clamp(0.0, 1.0))
}

/// Hardware classes and regions interned to small integers, so the auction's filters compare
/// integers; reference-counted by the offers using them, so labels that no offer uses anymore
/// are forgotten.
#[derive(Debug, Default)]
struct Labels {
    ids: HashMap<String, (u32, u32)>,
    free: Vec<u32>,
    next: u32,
}

impl Labels {
    /// The id of `s`, taking a reference.
    fn acquire(&mut self, s: &str) -> u32 {
        if let Some((id, refs)) = self.ids.get_mut(s) {
            *refs = refs.saturating_add(1);
            return *id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            let id = self.next;
            self.next = self.next.saturating_add(1);
            id
        });
        self.ids.insert(s.to_string(), (id, 1));
        id
    }

    /// Drops a reference to `s`.
    fn release(&mut self, s: &str) {
        if let Some((id, refs)) = self.ids.get_mut(s) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                let id = *id;
                self.ids.remove(s);
                self.free.push(id);
            }
        }
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).map(|(id, _)| *id)
    }
}

/// A bid prepared once per auction.
struct Query {
    prompt: f64,
    output: f64,
    max_in: u128,
    max_out: u128,
    /// `max_in` narrowed to `u64` (saturating), to compare with [`Hot`] rows.
    max_in_narrow: u64,
    max_out_narrow: u64,
}

impl Query {
    fn new(bid: &Bid) -> Query {
        // A bid with no expected tokens still ranks by price: weigh both prices equally.
        let (p, o) = if bid.expected_prompt_tokens == 0 && bid.expected_output_tokens == 0 {
            (1, 1)
        } else {
            (bid.expected_prompt_tokens, bid.expected_output_tokens)
        };
        let max_in = bid.max_price_in.map_or(u128::MAX, Amount::units);
        let max_out = bid.max_price_out.map_or(u128::MAX, Amount::units);
        Query {
            prompt: p as f64,
            output: o as f64,
            max_in,
            max_out,
            max_in_narrow: u64::try_from(max_in).unwrap_or(u64::MAX),
            max_out_narrow: u64::try_from(max_out).unwrap_or(u64::MAX),
        }
    }

    /// True when the row is live at `now_ms` and its prices are within the limits.
    #[inline]
    fn live_and_affordable(&self, h: &Hot, offer: &SignedOffer, now_ms: u64) -> bool {
        if h.expires_ms <= now_ms
            || h.price_in > self.max_in_narrow
            || h.price_out > self.max_out_narrow
        {
            return false;
        }
        // A narrowed price is exact below BIG; at BIG compare the full one.
        !(h.price_in == BIG || h.price_out == BIG) || self.affordable_big(offer)
    }

    #[cold]
    #[inline(never)]
    fn affordable_big(&self, offer: &SignedOffer) -> bool {
        offer.offer.price_in.units() <= self.max_in && offer.offer.price_out.units() <= self.max_out
    }

    /// The expected cost term of the score: prices shifted up by one unit (so free offers
    /// still rank by service) weighted by the expected token counts.
    #[inline]
    fn cost(&self, h: &Hot, offer: &SignedOffer) -> f64 {
        if h.price_in == BIG || h.price_out == BIG {
            self.cost_big(offer)
        } else {
            // u64 -> f64 rounds exactly as u128 -> f64 does for the same integer.
            self.prompt * (h.price_in as f64 + 1.0) + self.output * (h.price_out as f64 + 1.0)
        }
    }

    #[cold]
    #[inline(never)]
    fn cost_big(&self, offer: &SignedOffer) -> f64 {
        self.prompt * (offer.offer.price_in.units() as f64 + 1.0)
            + self.output * (offer.offer.price_out.units() as f64 + 1.0)
    }
}

/// The hot row of `offer` for provider slot `slot`, with its labels interned in `labels`.
fn hot_of(offer: &SignedOffer, slot: u32, labels: &mut Labels) -> Hot {
    let o = &offer.offer;
    Hot {
        expires_ms: o.expires_ms,
        price_in: narrow(o.price_in),
        price_out: narrow(o.price_out),
        capacity: o.capacity,
        slot,
        hardware: labels.acquire(&o.hardware),
        region: labels.acquire(&o.region),
    }
}

fn release_labels(labels: &mut Labels, offer: &SignedOffer) {
    labels.release(&offer.offer.hardware);
    labels.release(&offer.offer.region);
}

/// A scored eligible offer during an auction: score, provider slot, row.
type Scored = (f64, u32, usize);

/// The live offers the gateway knows, plus what it has measured of each provider.
#[derive(Debug, Default)]
pub struct OfferBook {
    chain: Option<u64>,
    models: HashMap<Hash32, ModelBook>,
    /// model_name -> ModelId -> how many stored offers give that model that name.
    names: HashMap<String, HashMap<Hash32, u32>>,
    labels: Labels,
    index: HashMap<AccountId, u32>,
    slots: Vec<Slot>,
    live: Vec<Live>,
    free: Vec<u32>,
    len: usize,
    /// Most providers remembered (0: [`DEFAULT_MAX_PROVIDERS`]).
    max_providers: usize,
}

impl OfferBook {
    /// An empty book accepting offers for any chain.
    pub fn new() -> OfferBook {
        OfferBook::default()
    }

    /// This book, accepting only offers for `chain_id`.
    pub fn with_chain(mut self, chain_id: u64) -> OfferBook {
        self.chain = Some(chain_id);
        self
    }

    /// This book, remembering at most `max` providers.
    pub fn with_max_providers(mut self, max: usize) -> OfferBook {
        self.max_providers = max;
        self
    }

    /// Verifies and stores an offer, replacing that provider's previous offer for the same
    /// model. Refuses: another chain than [`OfferBook::with_chain`]'s; expired
    /// (`expires_ms <= now_ms`); issued more than [`MAX_CLOCK_SKEW_MS`] after `now_ms`; a
    /// `seq` not above the last accepted for this (provider, model), even if that offer was
    /// pruned; more than [`MAX_MODELS_PER_PROVIDER`] models for one provider; and whatever
    /// [`SignedOffer::verify`] refuses (size, shape, lifetime, signature). The cheap checks run
    /// before the signature, and a refused offer changes nothing.
    pub fn insert(&mut self, offer: SignedOffer, now_ms: u64) -> Result<(), OfferError> {
        let o = &offer.offer;
        if let Some(expected) = self.chain {
            if o.chain_id != expected {
                return Err(OfferError::WrongChain {
                    expected,
                    got: o.chain_id,
                });
            }
        }
        if o.expires_ms <= now_ms {
            return Err(OfferError::Expired {
                expires_ms: o.expires_ms,
                now_ms,
            });
        }
        if o.issued_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(OfferError::FromTheFuture {
                issued_ms: o.issued_ms,
                now_ms,
            });
        }
        if let Some(slot) = self.slot_of(&o.provider) {
            match slot.marks.iter().find(|m| m.model == o.model) {
                Some(m) if o.seq <= m.seq => {
                    return Err(OfferError::StaleSeq {
                        seq: o.seq,
                        stored: m.seq,
                    })
                }
                None if slot.marks.len() >= MAX_MODELS_PER_PROVIDER => {
                    return Err(OfferError::TooManyModels {
                        max: MAX_MODELS_PER_PROVIDER,
                    })
                }
                _ => {}
            }
        } else {
            let max = match self.max_providers {
                0 => DEFAULT_MAX_PROVIDERS,
                m => m,
            };
            if self.index.len() >= max {
                return Err(OfferError::BookFull { max });
            }
        }
        offer.verify()?;

        let provider = offer.offer.provider;
        let model = offer.offer.model;
        let keep_until = offer.offer.issued_ms.saturating_add(MAX_OFFER_TTL_MS);
        let slot_ix = self.slot_for(provider);
        if let Some(slot) = self.slots.get_mut(slot_ix as usize) {
            match slot.marks.iter_mut().find(|m| m.model == model) {
                Some(m) => {
                    m.seq = offer.offer.seq;
                    m.keep_until_ms = m.keep_until_ms.max(keep_until);
                    m.stored = true;
                }
                None => slot.marks.push(Mark {
                    model,
                    seq: offer.offer.seq,
                    keep_until_ms: keep_until,
                    stored: true,
                }),
            }
        }
        add_name(&mut self.names, &offer.offer.model_name, model);
        let hot = hot_of(&offer, slot_ix, &mut self.labels);
        let mb = self.models.entry(model).or_default();
        match mb.pos.get(&provider).copied() {
            Some(i) => {
                if let (Some(h), Some(c)) = (mb.hot.get_mut(i), mb.cold.get_mut(i)) {
                    let old = std::mem::replace(c, offer);
                    *h = hot;
                    drop_name(&mut self.names, &old.offer.model_name, &model);
                    release_labels(&mut self.labels, &old);
                }
            }
            None => {
                mb.pos.insert(provider, mb.hot.len());
                mb.hot.push(hot);
                mb.cold.push(offer);
                self.len += 1;
            }
        }
        Ok(())
    }

    /// Drops every offer expired at `now_ms` and forgets providers with nothing left to
    /// remember; returns how many offers were dropped.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let mut dropped = 0;
        let OfferBook {
            models,
            names,
            labels,
            index,
            slots,
            live,
            free,
            len,
            ..
        } = self;
        for (model, mb) in models.iter_mut() {
            let mut i = 0;
            while i < mb.hot.len() {
                let expired = mb.hot.get(i).is_some_and(|h| h.expires_ms <= now_ms);
                if !expired {
                    i += 1;
                    continue;
                }
                let slot_ix = mb.hot.get(i).map(|h| h.slot);
                if let Some(old) = mb.remove_at(i) {
                    drop_name(names, &old.offer.model_name, model);
                    release_labels(labels, &old);
                    unmark(slots, slot_ix, model);
                    dropped += 1;
                    *len = len.saturating_sub(1);
                } else {
                    i += 1;
                }
            }
        }
        models.retain(|_, mb| !mb.hot.is_empty());
        for (ix, slot) in slots.iter_mut().enumerate() {
            if !slot.in_use {
                continue;
            }
            slot.marks.retain(|m| m.stored || m.keep_until_ms > now_ms);
            let idle = live.get(ix).is_none_or(|l| l.load == 0);
            if slot.marks.is_empty() && slot.pristine() && idle {
                index.remove(&slot.account);
                slot.in_use = false;
                if let Some(l) = live.get_mut(ix) {
                    *l = Live::default();
                }
                if let Ok(ix) = u32::try_from(ix) {
                    free.push(ix);
                }
            }
        }
        dropped
    }

    /// Removes every offer of `provider` (its measurements and replay marks are kept).
    pub fn remove_provider(&mut self, provider: &AccountId) {
        let Some(slot_ix) = self.index.get(provider).copied() else {
            return;
        };
        let models: Vec<Hash32> = self
            .slots
            .get(slot_ix as usize)
            .map(|s| {
                s.marks
                    .iter()
                    .filter(|m| m.stored)
                    .map(|m| m.model)
                    .collect()
            })
            .unwrap_or_default();
        for model in models {
            let Some(mb) = self.models.get_mut(&model) else {
                continue;
            };
            let Some(i) = mb.pos.get(provider).copied() else {
                continue;
            };
            if let Some(old) = mb.remove_at(i) {
                drop_name(&mut self.names, &old.offer.model_name, &model);
                release_labels(&mut self.labels, &old);
                unmark(&mut self.slots, Some(slot_ix), &model);
                self.len = self.len.saturating_sub(1);
            }
            if mb.hot.is_empty() {
                self.models.remove(&model);
            }
        }
    }

    /// How many offers are stored (expired ones count until [`OfferBook::prune`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no offer is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The models with at least one live offer at `now_ms`, sorted by name then id.
    pub fn models(&self, now_ms: u64) -> Vec<ModelSummary> {
        let mut out = Vec::new();
        let mut names: Vec<(&str, usize)> = Vec::new();
        for (model, mb) in &self.models {
            names.clear();
            let mut s = ModelSummary {
                model: *model,
                model_name: String::new(),
                context_len: 0,
                providers: 0,
                min_price_in: Amount::MAX,
                min_price_out: Amount::MAX,
            };
            for c in mb.cold.iter().filter(|c| c.offer.expires_ms > now_ms) {
                let o = &c.offer;
                s.providers += 1;
                s.context_len = s.context_len.max(o.context_len);
                s.min_price_in = s.min_price_in.min(o.price_in);
                s.min_price_out = s.min_price_out.min(o.price_out);
                match names.iter_mut().find(|(n, _)| *n == o.model_name) {
                    Some((_, count)) => *count += 1,
                    None => names.push((&o.model_name, 1)),
                }
            }
            if s.providers == 0 {
                continue;
            }
            if let Some((name, _)) = names
                .iter()
                .min_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)))
            {
                s.model_name = (*name).to_string();
            }
            out.push(s);
        }
        out.sort_by(|a, b| {
            a.model_name
                .cmp(&b.model_name)
                .then_with(|| a.model.cmp(&b.model))
        });
        out
    }

    /// The model called `name_or_id` among live offers: a ModelId in hex (64 characters) with
    /// at least one live offer, or else a `model_name`. When several ModelIds carry that name,
    /// the one with the most live offers giving that name wins, ties to the smaller id.
    /// Names are self-declared by providers: a client that needs a particular model should
    /// name it by id.
    pub fn resolve(&self, name_or_id: &str, now_ms: u64) -> Option<Hash32> {
        if name_or_id.len() == 64 {
            if let Ok(id) = name_or_id.parse::<Hash32>() {
                let live = self
                    .models
                    .get(&id)
                    .is_some_and(|mb| mb.hot.iter().any(|h| h.expires_ms > now_ms));
                if live {
                    return Some(id);
                }
            }
        }
        let ids = self.names.get(name_or_id)?;
        let mut best: Option<(usize, Hash32)> = None;
        for id in ids.keys() {
            let Some(mb) = self.models.get(id) else {
                continue;
            };
            let n = mb
                .cold
                .iter()
                .filter(|c| c.offer.expires_ms > now_ms && c.offer.model_name == name_or_id)
                .count();
            if n == 0 {
                continue;
            }
            best = match best {
                Some((bn, bid)) if bn > n || (bn == n && bid < *id) => Some((bn, bid)),
                _ => Some((n, *id)),
            };
        }
        best.map(|(_, id)| id)
    }

    /// The stored offer of `provider` for `model` (it may have expired if not yet pruned).
    pub fn offer(&self, provider: &AccountId, model: &Hash32) -> Option<&SignedOffer> {
        let mb = self.models.get(model)?;
        mb.pos.get(provider).and_then(|&i| mb.cold.get(i))
    }

    /// Every stored offer for `model`, in no particular order (expired ones included until
    /// pruned).
    pub fn offers_for<'a>(&'a self, model: &Hash32) -> impl Iterator<Item = &'a SignedOffer> + 'a {
        self.models
            .get(model)
            .into_iter()
            .flat_map(|mb| mb.cold.iter())
    }

    /// The reverse auction. Eligible: offers for `bid.model` live at `now_ms`, with prices at
    /// or under the bid's limits, whose provider is not in `bid.exclude` and not at capacity
    /// (in-flight load >= the offer's capacity), whose hardware and region equal the bid's
    /// when given, and whose features contain the bid's. They are ranked best first by score (lower is better), ties by smaller
    /// provider id, and at most `k` are returned.
    ///
    /// ```text
    /// score = (P * (price_in + 1) + O * (price_out + 1))          expected cost
    ///       * (1 + LOAD_WEIGHT * load / capacity)                   busy providers wait
    ///       * (1 + latency_ms / LATENCY_SCALE_MS)                   EWMA of first-token latency
    ///       / (1 - failure_rate)                                    expected tries per success
    ///       / (REPUTATION_BASE + reputation)                        audited honesty
    /// ```
    ///
    /// where P and O are the bid's expected prompt and output tokens (both taken as 1 when both
    /// are 0), an unmeasured latency counts as [`UNKNOWN_LATENCY_MS`], and `failure_rate` is
    /// the moving average of recent outcomes capped at [`MAX_FAILURE_RATE`]. Cost over price
    /// one unit higher keeps free offers ordered by service.
    ///
    /// Scores are floats (they are not money): prices that differ by less than one part in
    /// 2^53 rank as equal. One pass over the model's offers, keeping the best k in a sorted
    /// buffer; an offer whose cost alone can't get under the k-th score even with the best
    /// possible service is skipped before its provider's numbers are read; nothing is
    /// allocated per offer.
    pub fn auction(&self, bid: &Bid, now_ms: u64, k: usize) -> Vec<Candidate> {
        let Some(mb) = self.models.get(&bid.model) else {
            return Vec::new();
        };
        if k == 0 {
            return Vec::new();
        }
        // A label no stored offer has matches nothing.
        let label = |want: &Option<String>| match want {
            None => Ok(None),
            Some(s) => self.labels.get(s).map(Some).ok_or(()),
        };
        let (Ok(hardware), Ok(region)) = (label(&bid.hardware), label(&bid.region)) else {
            return Vec::new();
        };
        let q = Query::new(bid);
        // Excluded accounts as slots, so the scan compares integers (no allocation when empty).
        let excluded: Vec<u32> = bid
            .exclude
            .iter()
            .filter_map(|a| self.index.get(a).copied())
            .collect();
        // Best first: lower score, then smaller provider id (read only on equal scores).
        let rank = |a: &Scored, b: &Scored| {
            a.0.total_cmp(&b.0).then_with(|| {
                let id = |x: &Scored| self.slots.get(x.1 as usize).map(|s| s.account);
                id(a).cmp(&id(b))
            })
        };
        let small = k <= SMALL_K;
        let mut top: Vec<Scored> = Vec::with_capacity(k.min(mb.hot.len()));
        // The k-th best score so far once k are held: anything scoring above it is out.
        let mut bar = f64::INFINITY;
        let (any_hw, hw) = (hardware.is_none(), hardware.unwrap_or(0));
        let (any_region, rg) = (region.is_none(), region.unwrap_or(0));
        for (i, (h, c)) in mb.hot.iter().zip(&mb.cold).enumerate() {
            let cost = q.cost(h, c);
            // Most offers stop here, at a well-predicted branch: once k are held, even the
            // best service could not bring their cost under the k-th score.
            if cost * SERVICE_FLOOR > bar {
                continue;
            }
            if h.expires_ms <= now_ms
                || h.price_in > q.max_in_narrow
                || h.price_out > q.max_out_narrow
                || !(any_hw || h.hardware == hw)
                || !(any_region || h.region == rg)
                || ((h.price_in == BIG || h.price_out == BIG) && !q.affordable_big(c))
                || (!excluded.is_empty() && excluded.contains(&h.slot))
                // Read from the full offer, and only when the bid needs features: the hot
                // row stays 40 bytes.
                || (bid.features != Features::NONE && !c.offer.features.contains(bid.features))
            {
                continue;
            }
            let Some(l) = self.live.get(h.slot as usize) else {
                continue;
            };
            if l.load >= h.capacity {
                continue;
            }
            let cand = (finish(cost, l.load, h.capacity, l.service), h.slot, i);
            if !small {
                top.push(cand);
                continue;
            }
            if top.len() == k {
                match top.last() {
                    Some(worst) if rank(&cand, worst) == Ordering::Less => {
                        top.pop();
                    }
                    _ => continue,
                }
            }
            let at = top.partition_point(|x| rank(x, &cand) == Ordering::Less);
            top.insert(at, cand);
            if top.len() == k {
                bar = top.last().map_or(f64::INFINITY, |w| w.0);
            }
        }
        if !small {
            if top.len() > k {
                top.select_nth_unstable_by(k - 1, rank);
                top.truncate(k);
            }
            top.sort_unstable_by(rank);
        }
        top.into_iter()
            .filter_map(|(score, _, i)| {
                mb.cold.get(i).map(|offer| Candidate {
                    offer: offer.clone(),
                    score,
                })
            })
            .collect()
    }

    /// The score `offer` would get in [`OfferBook::auction`] for `bid` at `now_ms` with the
    /// stats this book holds for its provider, or `None` when it would not be eligible. The
    /// offer need not be in the book (its signature is not checked here).
    pub fn score(&self, bid: &Bid, offer: &SignedOffer, now_ms: u64) -> Option<f64> {
        let o = &offer.offer;
        if o.model != bid.model
            || bid.exclude.contains(&o.provider)
            || bid.hardware.as_ref().is_some_and(|x| *x != o.hardware)
            || bid.region.as_ref().is_some_and(|x| *x != o.region)
            || !o.features.contains(bid.features)
        {
            return None;
        }
        let q = Query::new(bid);
        let h = Hot {
            expires_ms: o.expires_ms,
            price_in: narrow(o.price_in),
            price_out: narrow(o.price_out),
            capacity: o.capacity,
            slot: 0,
            hardware: 0,
            region: 0,
        };
        if !q.live_and_affordable(&h, offer, now_ms) {
            return None;
        }
        let l = self
            .index
            .get(&o.provider)
            .and_then(|&ix| self.live.get(ix as usize))
            .copied()
            .unwrap_or_default();
        if l.load >= h.capacity {
            return None;
        }
        Some(finish(q.cost(&h, offer), l.load, h.capacity, l.service))
    }

    /// Counts a request sent to `provider` (load + 1).
    pub fn begin_request(&mut self, provider: &AccountId) {
        let ix = self.slot_for(*provider);
        if let Some(l) = self.live.get_mut(ix as usize) {
            l.load = l.load.saturating_add(1);
        }
    }

    /// Counts a request of `provider` finished (load - 1, never below 0).
    pub fn end_request(&mut self, provider: &AccountId) {
        if let Some(l) = self
            .index
            .get(provider)
            .and_then(|&ix| self.live.get_mut(ix as usize))
        {
            l.load = l.load.saturating_sub(1);
        }
    }

    /// Folds a first-token latency into `provider`'s moving average (weight
    /// [`LATENCY_ALPHA`]; the first sample sets it). Negative samples count as 0, samples
    /// above [`MAX_LATENCY_MS`] as that; NaN and infinities are ignored.
    pub fn record_latency(&mut self, provider: &AccountId, first_token_ms: f64) {
        if !first_token_ms.is_finite() {
            return;
        }
        let x = first_token_ms.clamp(0.0, MAX_LATENCY_MS);
        self.update(provider, |s| {
            s.latency_ms = Some(match s.latency_ms {
                Some(avg) => avg + LATENCY_ALPHA * (x - avg),
                None => x,
            });
        });
    }

    /// Records a failed request: raises the recent failure rate, which demotes the provider.
    pub fn record_failure(&mut self, provider: &AccountId) {
        self.update(provider, |s| {
            s.failures = s.failures.saturating_add(1);
            s.failure_rate += FAILURE_ALPHA * (1.0 - s.failure_rate);
        });
    }

    /// Records a successful request: the recent failure rate decays.
    pub fn record_success(&mut self, provider: &AccountId) {
        self.update(provider, |s| {
            s.successes = s.successes.saturating_add(1);
            s.failure_rate *= 1.0 - FAILURE_ALPHA;
        });
    }

    /// Sets `provider`'s reputation, clamped to `[0, 1]` (NaN is ignored). Unknown providers
    /// have [`DEFAULT_REPUTATION`].
    pub fn set_reputation(&mut self, provider: &AccountId, reputation: f64) {
        if reputation.is_nan() {
            return;
        }
        self.update(provider, |s| {
            s.reputation = reputation.clamp(0.0, 1.0);
            s.reputation_set = true;
        });
    }

    /// What the book has measured of `provider` (defaults for an unknown one).
    pub fn stats(&self, provider: &AccountId) -> ProviderStats {
        let Some(&ix) = self.index.get(provider) else {
            return ProviderStats {
                reputation: DEFAULT_REPUTATION,
                ..ProviderStats::default()
            };
        };
        let load = self.live.get(ix as usize).map_or(0, |l| l.load);
        match self.slots.get(ix as usize) {
            Some(s) => ProviderStats {
                load,
                latency_ms: s.latency_ms,
                failures: s.failures,
                successes: s.successes,
                reputation: s.reputation,
            },
            None => ProviderStats {
                load,
                reputation: DEFAULT_REPUTATION,
                ..ProviderStats::default()
            },
        }
    }

    fn slot_of(&self, provider: &AccountId) -> Option<&Slot> {
        self.index
            .get(provider)
            .and_then(|&ix| self.slots.get(ix as usize))
    }

    /// The slot of `provider`, created if new.
    fn slot_for(&mut self, provider: AccountId) -> u32 {
        if let Some(&ix) = self.index.get(&provider) {
            return ix;
        }
        let ix = match self.free.pop() {
            Some(ix) => {
                if let Some(s) = self.slots.get_mut(ix as usize) {
                    *s = Slot::new(provider);
                }
                if let Some(l) = self.live.get_mut(ix as usize) {
                    *l = Live::default();
                }
                ix
            }
            None => {
                // More than 2^32 providers cannot fit in memory first.
                let ix = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Slot::new(provider));
                self.live.push(Live::default());
                ix
            }
        };
        self.index.insert(provider, ix);
        ix
    }

    /// Applies `f` to `provider`'s slot (created if new) and refreshes its service factor.
    fn update(&mut self, provider: &AccountId, f: impl FnOnce(&mut Slot)) {
        let ix = self.slot_for(*provider) as usize;
        if let Some(s) = self.slots.get_mut(ix) {
            f(s);
            let service = s.service();
            if let Some(l) = self.live.get_mut(ix) {
                l.service = service;
            }
        }
    }
}

fn add_name(names: &mut HashMap<String, HashMap<Hash32, u32>>, name: &str, model: Hash32) {
    let per = match names.get_mut(name) {
        Some(per) => per,
        None => names.entry(name.to_string()).or_default(),
    };
    let n = per.entry(model).or_insert(0);
    *n = n.saturating_add(1);
}

fn drop_name(names: &mut HashMap<String, HashMap<Hash32, u32>>, name: &str, model: &Hash32) {
    let Some(per) = names.get_mut(name) else {
        return;
    };
    if let Some(n) = per.get_mut(model) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per.remove(model);
        }
    }
    if per.is_empty() {
        names.remove(name);
    }
}

fn unmark(slots: &mut [Slot], slot_ix: Option<u32>, model: &Hash32) {
    if let Some(m) = slot_ix
        .and_then(|ix| slots.get_mut(ix as usize))
        .and_then(|s| s.marks.iter_mut().find(|m| m.model == *model))
    {
        m.stored = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offer::Offer;
    use agora_core::Keypair;
    use proptest::prelude::*;

    impl OfferBook {
        /// Every internal index agrees with the rows.
        fn check_invariants(&self) {
            let mut total = 0;
            let mut names: HashMap<(String, Hash32), u32> = HashMap::new();
            let mut labels: HashMap<String, u32> = HashMap::new();
            for (model, mb) in &self.models {
                assert!(!mb.hot.is_empty());
                assert_eq!(mb.hot.len(), mb.cold.len());
                assert_eq!(mb.hot.len(), mb.pos.len());
                for (i, (h, c)) in mb.hot.iter().zip(&mb.cold).enumerate() {
                    let o = &c.offer;
                    assert_eq!(o.model, *model);
                    assert_eq!(mb.pos.get(&o.provider), Some(&i));
                    assert_eq!(self.index.get(&o.provider), Some(&h.slot));
                    let slot = &self.slots[h.slot as usize];
                    assert!(slot.in_use);
                    assert_eq!(slot.account, o.provider);
                    let mark = slot.marks.iter().find(|m| m.model == *model).unwrap();
                    assert!(mark.stored);
                    assert_eq!(mark.seq, o.seq);
                    assert_eq!(Some(h.hardware), self.labels.get(&o.hardware));
                    assert_eq!(Some(h.region), self.labels.get(&o.region));
                    *names.entry((o.model_name.clone(), *model)).or_default() += 1;
                    *labels.entry(o.hardware.clone()).or_default() += 1;
                    *labels.entry(o.region.clone()).or_default() += 1;
                    total += 1;
                }
            }
            assert_eq!(total, self.len);
            let mut stored_names = HashMap::new();
            for (name, per) in &self.names {
                for (m, n) in per {
                    stored_names.insert((name.clone(), *m), *n);
                }
            }
            assert_eq!(stored_names, names);
            let refs: HashMap<String, u32> = self
                .labels
                .ids
                .iter()
                .map(|(s, (_, r))| (s.clone(), *r))
                .collect();
            assert_eq!(refs, labels);
            for (acct, &ix) in &self.index {
                assert_eq!(self.slots[ix as usize].account, *acct);
                assert!(self.slots[ix as usize].in_use);
                assert!(!self.free.contains(&ix));
            }
            assert_eq!(self.index.len() + self.free.len(), self.slots.len());
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            who: u8,
            model: u8,
            price: u64,
            seq: u64,
            ttl: u64,
            hw: u8,
        },
        Prune,
        Remove(u8),
        Begin(u8),
        End(u8),
        Fail(u8),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 0u8..3, 0u64..100, 0u64..6, 1u64..40_000, 0u8..3).prop_map(
                |(who, model, price, seq, ttl, hw)| Op::Insert { who, model, price, seq, ttl, hw }
            ),
            1 => Just(Op::Prune),
            1 => (0u8..6).prop_map(Op::Remove),
            1 => (0u8..6).prop_map(Op::Begin),
            1 => (0u8..6).prop_map(Op::End),
            1 => (0u8..6).prop_map(Op::Fail),
            2 => (0u64..20_000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_operations_keep_the_indexes_consistent(ops in proptest::collection::vec(op(), 1..60)) {
            let keys: Vec<Keypair> = (0..6u8).map(|i| Keypair::from_seed([i + 1; 32])).collect();
            let models: Vec<Hash32> = (0..3u8).map(|i| Hash32::of(&[i])).collect();
            let mut book = OfferBook::new();
            let mut now = 1_000_000u64;
            for op in ops {
                match op {
                    Op::Insert { who, model, price, seq, ttl, hw } => {
                        let k = &keys[who as usize];
                        let offer = Offer {
                            chain_id: 1,
                            provider: k.account(),
                            peer_id: vec![],
                            addrs: vec![],
                            model: models[model as usize],
                            model_name: format!("m{}", (model + who) % 2),
                            context_len: 1,
                            price_in: Amount::new(u128::from(price)),
                            price_out: Amount::new(u128::from(100 - price)),
                            hardware: format!("hw{hw}"),
                            region: format!("r{}", who % 2),
                            capacity: 2,
                            features: Features::ALL,
                            seq,
                            issued_ms: now,
                            expires_ms: now + ttl,
                        };
                        let _ = book.insert(offer.sign(k), now);
                    }
                    Op::Prune => {
                        book.prune(now);
                    }
                    Op::Remove(who) => book.remove_provider(&keys[who as usize].account()),
                    Op::Begin(who) => book.begin_request(&keys[who as usize].account()),
                    Op::End(who) => book.end_request(&keys[who as usize].account()),
                    Op::Fail(who) => book.record_failure(&keys[who as usize].account()),
                    Op::Tick(dt) => now += dt,
                }
                book.check_invariants();
                for m in &models {
                    let bid = Bid { expected_prompt_tokens: 3, expected_output_tokens: 1, ..Bid::new(*m) };
                    let got: Vec<(AccountId, f64)> =
                        book.auction(&bid, now, 3).iter().map(|c| (c.provider(), c.score)).collect();
                    let mut want: Vec<(f64, AccountId)> = book
                        .offers_for(m)
                        .filter_map(|o| book.score(&bid, o, now).map(|s| (s, o.offer.provider)))
                        .collect();
                    want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    let want: Vec<(AccountId, f64)> = want.into_iter().take(3).map(|(s, p)| (p, s)).collect();
                    prop_assert_eq!(got, want);
                }
            }
            // Once everything has expired and been pruned, nothing is left but measured providers.
            book.prune(u64::MAX);
            book.check_invariants();
            prop_assert!(book.is_empty());
            prop_assert!(book.labels.ids.is_empty());
            prop_assert!(book.names.is_empty());
            prop_assert!(book.models.is_empty());
        }
    }

    #[test]
    fn rows_stay_compact() {
        // The auction's scan reads these; docs/market.md quotes the sizes.
        assert_eq!(std::mem::size_of::<Hot>(), 40);
        assert_eq!(std::mem::size_of::<Live>(), 16);
    }

    #[test]
    fn pristine_providers_are_forgotten_and_slots_reused() {
        let k = Keypair::from_seed([1; 32]);
        let mut book = OfferBook::new();
        let offer = Offer {
            chain_id: 1,
            provider: k.account(),
            peer_id: vec![],
            addrs: vec![],
            model: Hash32::of(b"m"),
            model_name: "m".into(),
            context_len: 1,
            price_in: Amount::new(1),
            price_out: Amount::new(1),
            hardware: "cpu".into(),
            region: "eu".into(),
            capacity: 1,
            features: Features::ALL,
            seq: 1,
            issued_ms: 0,
            expires_ms: 1_000,
        };
        book.insert(offer.clone().sign(&k), 0).unwrap();
        // The replay mark keeps the slot until no older offer could still be live.
        assert_eq!(book.prune(1_000), 1);
        assert_eq!(book.index.len(), 1);
        assert_eq!(book.prune(MAX_OFFER_TTL_MS - 1), 0);
        assert_eq!(book.index.len(), 1);
        assert_eq!(book.prune(MAX_OFFER_TTL_MS), 0);
        assert!(book.index.is_empty());
        assert_eq!(book.free, vec![0]);
        let k2 = Keypair::from_seed([2; 32]);
        book.begin_request(&k2.account());
        assert_eq!(book.index.get(&k2.account()), Some(&0));
        assert_eq!(book.slots.len(), 1);
        assert_eq!(book.stats(&k.account()).load, 0);
        assert_eq!(book.stats(&k2.account()).load, 1);
        book.check_invariants();
    }

    #[test]
    fn fresh_keys_cannot_grow_the_book_past_its_bound() {
        let mut book = OfferBook::new().with_max_providers(2);
        let offer = |k: &Keypair, seq: u64| {
            Offer {
                chain_id: 1,
                provider: k.account(),
                peer_id: vec![],
                addrs: vec![],
                model: Hash32::of(b"m"),
                model_name: "m".into(),
                context_len: 1,
                price_in: Amount::new(1),
                price_out: Amount::new(1),
                hardware: "cpu".into(),
                region: "eu".into(),
                capacity: 1,
                features: Features::ALL,
                seq,
                issued_ms: 0,
                expires_ms: 1_000,
            }
            .sign(k)
        };
        let keys: Vec<Keypair> = (1..=3u8).map(|i| Keypair::from_seed([i; 32])).collect();
        book.insert(offer(&keys[0], 1), 0).unwrap();
        book.insert(offer(&keys[1], 1), 0).unwrap();
        assert_eq!(
            book.insert(offer(&keys[2], 1), 0),
            Err(OfferError::BookFull { max: 2 })
        );
        // A provider already known still renews.
        book.insert(offer(&keys[0], 2), 0).unwrap();
        assert_eq!(book.len(), 2);
        book.check_invariants();
    }
}
