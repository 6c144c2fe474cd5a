//! The ledger's Prometheus metrics: counters updated as blocks are sealed, and gauges read
//! from the state when `/metrics` is scraped (so a scrape, not every block, pays for sums
//! over all channels and accounts). Names in `docs/metrics.md`.

use crate::block::{Block, Outcomes};
use crate::server::Node;
use crate::state::Event;
use crate::tx::TxBody;
use agora_metrics::families::label;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// The name of a transaction kind (its `TxBody` variant).
pub fn tx_kind(body: &TxBody) -> &'static str {
    match body {
        TxBody::Transfer { .. } => "Transfer",
        TxBody::Stake { .. } => "Stake",
        TxBody::Unstake { .. } => "Unstake",
        TxBody::OpenChannel { .. } => "OpenChannel",
        TxBody::TopUpChannel { .. } => "TopUpChannel",
        TxBody::ClaimVoucher { .. } => "ClaimVoucher",
        TxBody::CloseChannel { .. } => "CloseChannel",
        TxBody::RegisterVerifier { .. } => "RegisterVerifier",
        TxBody::PostReceiptRoot { .. } => "PostReceiptRoot",
        TxBody::PostLateRoot { .. } => "PostLateRoot",
        TxBody::AuditVerdict { .. } => "AuditVerdict",
        TxBody::CommitAudit { .. } => "CommitAudit",
        TxBody::RevealAudit { .. } => "RevealAudit",
        TxBody::PlantFraud { .. } => "PlantFraud",
        TxBody::RevealPlant { .. } => "RevealPlant",
        TxBody::DemandMaterial { .. } => "DemandMaterial",
        TxBody::AnswerDemand { .. } => "AnswerDemand",
        TxBody::ChallengeInclusion { .. } => "ChallengeInclusion",
        TxBody::AnswerInclusion { .. } => "AnswerInclusion",
        TxBody::AdvanceEpoch => "AdvanceEpoch",
    }
}

/// Counts one sealing: the block (if any was committed), its transactions and events, and
/// the transactions the rules refused.
pub(crate) fn sealed(block: Option<&Block>, outcomes: &Outcomes, started: Instant) {
    let m = agora_metrics::ledger();
    for (_, r) in outcomes {
        match r {
            Ok(events) => {
                for e in events {
                    event(e);
                }
            }
            Err(e) => {
                m.rejected.get_or_create(&label("code", e.code())).inc();
            }
        }
    }
    if let Some(b) = block {
        m.blocks.inc();
        m.height
            .set(i64::try_from(b.header.height).unwrap_or(i64::MAX));
        for tx in &b.txs {
            m.txs
                .get_or_create(&label("kind", tx_kind(&tx.tx.body)))
                .inc();
        }
        m.commit_time.observe(started.elapsed().as_secs_f64());
    }
}

fn event(e: &Event) {
    let m = agora_metrics::ledger();
    let slash = |kind: &str, amount: agora_core::Amount| {
        m.slashes.get_or_create(&label("kind", kind)).inc();
        m.slashed
            .inc_by(agora_metrics::amount_counter(amount.units()));
    };
    match e {
        Event::AuditRevealed { passed, .. } => {
            let outcome = if *passed { "passed" } else { "failed" };
            m.audits.get_or_create(&label("outcome", outcome)).inc();
        }
        Event::Slashed { amount, .. } => slash("fraud", *amount),
        Event::OmissionSlashed { amount, .. } => slash("omission", *amount),
        Event::FalseAlarm { slashed, .. } => slash("false_alarm", *slashed),
        Event::PlantRevealed {
            lazy: Some(_),
            slashed,
            ..
        } => slash("lazy_verifier", *slashed),
        Event::EpochAdvanced { epoch, .. } => {
            m.epoch.set(i64::try_from(*epoch).unwrap_or(i64::MAX));
        }
        _ => {}
    }
}

/// `GET /metrics`: the gauges read from the state now, then every family.
pub(crate) async fn scrape(State(node): State<Node>) -> Response {
    let m = agora_metrics::ledger();
    node.with_ledger(|l| {
        let s = &l.state;
        m.height.set(i64::try_from(l.height).unwrap_or(i64::MAX));
        m.epoch.set(i64::try_from(s.epoch).unwrap_or(i64::MAX));
        let (mut escrow, mut open) = (0u128, 0i64);
        for c in s.channels.values().filter(|c| !c.closed) {
            escrow = escrow.saturating_add(c.escrow().units());
            open += 1;
        }
        m.escrow.set(agora_metrics::amount_gauge(escrow));
        m.open_channels.set(open);
        let staked = s
            .accounts
            .values()
            .fold(0u128, |t, a| t.saturating_add(a.stake.units()));
        m.staked.set(agora_metrics::amount_gauge(staked));
        m.verifiers
            .set(s.accounts.values().filter(|a| a.verifier).count() as i64);
        m.accounts.set(s.accounts.len() as i64);
    });
    (
        [(header::CONTENT_TYPE, agora_metrics::CONTENT_TYPE)],
        agora_metrics::encode(),
    )
        .into_response()
}
