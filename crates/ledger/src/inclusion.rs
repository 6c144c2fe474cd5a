//! Non-inclusion challenges: every paid answer is audit-eligible because the payer holding a
//! provider-signed receipt can make the provider prove it sits under one of its roots.
//!
//! A receipt names the epoch `r` it was served in. The provider must put it under its root for
//! `r` or `r + 1`, or (back from an outage) under a later late root (`PostLateRoot`, audited in
//! full, its passes earning no probation credit), so a late receipt is audited for sure and
//! an old one cannot be counted again. From epoch `r + 2` to `r + 1 + escalation_epochs` the
//! payer of the receipt's channel may challenge it, escrowing `challenge_bond`; the provider
//! answers within `answer_epochs` with a Merkle path (and takes the bond), or at the start of
//! the epoch after the deadline it is slashed `slash_bps` of its stake, the payer gets back the
//! receipt's cost (at most what the channel paid and was not yet refunded, at most the slash)
//! and its bond, and the rest is burned.

use crate::error::TxError;
use crate::state::{Challenge, Event, Journal, State};
use agora_core::{merkle, AccountId, Amount, Hash32};
use agora_wire::protocol::SignedReceipt;

impl State {
    pub(crate) fn challenge(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        receipt: &SignedReceipt,
    ) -> Result<Vec<Event>, TxError> {
        let r = &receipt.receipt;
        if r.chain_id != self.chain_id {
            return Err(TxError::ReceiptMismatch {
                reason: "the receipt names another chain",
            });
        }
        let ch = self
            .channels
            .get(&r.channel)
            .ok_or(TxError::UnknownChannel(r.channel))?;
        if ch.provider != r.provider {
            return Err(TxError::ReceiptMismatch {
                reason: "the receipt's channel is not its provider's",
            });
        }
        if ch.payer != from {
            return Err(TxError::NotChannelPayer {
                channel: r.channel,
                account: from,
            });
        }
        let span = |n: u64| {
            r.epoch.checked_add(n).ok_or(TxError::Overflow {
                what: "challenge window",
            })
        };
        let last =
            span(1)?
                .checked_add(self.params.escalation_epochs)
                .ok_or(TxError::Overflow {
                    what: "challenge window",
                })?;
        self.window("the inclusion challenge", span(2)?, last)?;
        let key = receipt.hash();
        if self.challenges.contains_key(&key) {
            return Err(TxError::AlreadyChallenged(key));
        }
        let due_epoch = self.answer_due_epoch()?;
        let bond = self.params.challenge_bond;
        let (provider, channel, cost) = (
            r.provider,
            r.channel,
            agora_wire::micros_to_amount(r.cost_micros),
        );
        self.debit(j, from, bond)?;
        j.challenges.push((key, None));
        self.challenges.insert(
            key,
            Challenge {
                payer: from,
                provider,
                channel,
                receipt_epoch: r.epoch,
                cost,
                bond,
                due_epoch,
                open: true,
            },
        );
        j.challenge_queue.push(((due_epoch, key), false));
        self.challenge_queue.insert((due_epoch, key));
        Ok(vec![Event::InclusionChallenged {
            receipt: key,
            payer: from,
            provider,
            due_epoch,
        }])
    }

    pub(crate) fn answer_inclusion(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        receipt: Hash32,
        epoch: u64,
        index: u64,
        proof: &[Hash32],
    ) -> Result<Vec<Event>, TxError> {
        let c = self
            .challenges
            .get(&receipt)
            .cloned()
            .ok_or(TxError::Malformed {
                reason: "no challenge of this receipt",
            })?;
        if !c.open || c.provider != from || self.epoch > c.due_epoch {
            return Err(TxError::Malformed {
                reason: "the challenge is not open to this provider's answer",
            });
        }
        if epoch < c.receipt_epoch {
            return Err(TxError::WrongEpoch {
                expected: c.receipt_epoch,
                got: epoch,
            });
        }
        let posted = self
            .roots
            .get(&(from, epoch))
            .ok_or(TxError::UnknownReceiptRoot {
                provider: from,
                epoch,
            })?;
        // A receipt that missed its epoch's root and the next one counts only under a late
        // root, audited in full: arriving late must not lower its chance of an audit (that
        // root's probability was fixed before the beacon that selects it was drawn). A root
        // audited in full only because of probation is not one: its passes count toward
        // leaving probation, and an old receipt re-posted under it would count again.
        if !posted.may_hold(epoch, c.receipt_epoch) {
            return Err(TxError::LateReceiptRoot {
                provider: from,
                receipt_epoch: c.receipt_epoch,
                epoch,
            });
        }
        if index >= posted.receipts || !merkle::verify(&posted.root, &receipt, index, proof) {
            return Err(TxError::BadReceiptProof { receipt });
        }
        if epoch - c.receipt_epoch > 1 {
            // Its verdicts come later than the receipt's own root's would have.
            self.hold_unbonding(j, from, epoch)?;
        }
        self.close_challenge(j, receipt, &c);
        self.credit(j, from, c.bond)?;
        Ok(vec![Event::InclusionProven {
            receipt,
            provider: from,
            bond: c.bond,
        }])
    }

    fn close_challenge(&mut self, j: &mut Journal, key: Hash32, c: &Challenge) {
        j.challenges.push((key, Some(c.clone())));
        self.challenges.insert(
            key,
            Challenge {
                open: false,
                ..c.clone()
            },
        );
        j.challenge_queue.push(((c.due_epoch, key), true));
        self.challenge_queue.remove(&(c.due_epoch, key));
    }

    /// At the start of epoch `now`: every challenge whose deadline passed unanswered slashes
    /// its provider.
    pub(crate) fn expire_challenges(
        &mut self,
        j: &mut Journal,
        now: u64,
    ) -> Result<Vec<Event>, TxError> {
        let due: Vec<(u64, Hash32)> = self
            .challenge_queue
            .iter()
            .take_while(|(d, _)| *d < now)
            .copied()
            .collect();
        let mut events = Vec::with_capacity(due.len());
        for (_, key) in due {
            let Some(c) = self.challenges.get(&key).cloned() else {
                continue;
            };
            self.close_challenge(j, key, &c);
            let slashed = self.slash_stake(j, c.provider, self.params.slash_bps)?;
            let ch = self.chan_mut_pub(j, c.channel)?;
            let left = ch.claimed.checked_sub(ch.refunded).unwrap_or(Amount::ZERO);
            let refund = c.cost.min(left).min(slashed);
            ch.refunded = ch
                .refunded
                .checked_add(refund)
                .map_err(|_| TxError::Overflow { what: "refunded" })?;
            let burned = slashed
                .checked_sub(refund)
                .map_err(|_| TxError::Overflow { what: "refund" })?;
            let back = refund
                .checked_add(c.bond)
                .map_err(|_| TxError::Overflow { what: "refund" })?;
            self.credit(j, c.payer, back)?;
            self.burn(j, burned)?;
            events.push(Event::OmissionSlashed {
                receipt: key,
                provider: c.provider,
                payer: c.payer,
                amount: slashed,
                refund,
                burned,
            });
        }
        Ok(events)
    }
}
