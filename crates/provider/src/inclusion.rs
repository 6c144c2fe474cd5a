//! Inclusion queries: a payer holding one of this provider's receipts asks under which posted
//! root it sits, and gets the leaf and its Merkle path, so it need not challenge the receipt
//! on the ledger (where an honest provider would answer too, taking the payer's bond).
//!
//! The query carries the receipt, signed by this provider: a key that never paid it cannot
//! make it look anything up, and each look-up reads the roots of the receipt's epoch and the
//! next only (the roots an on-time inclusion proof may use).

use std::sync::Arc;
use std::time::Duration;

use agora_net::protocol::{read_frame, write_frame, InclusionAnswer, InclusionQuery};
use futures::{AsyncRead, AsyncWrite};

use crate::serve::Service;

const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Service {
    /// Answers one inclusion query on `stream`.
    pub async fn answer_inclusion<S>(self: Arc<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let query: InclusionQuery =
            match tokio::time::timeout(READ_TIMEOUT, read_frame(&mut stream)).await {
                Ok(Ok(Some(q))) => q,
                _ => return,
            };
        let answer = self.clone().inclusion_answer(query).await;
        let _ = write_frame(&mut stream, &answer).await;
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
    }

    async fn inclusion_answer(self: Arc<Self>, query: InclusionQuery) -> InclusionAnswer {
        let r = &query.receipt.receipt;
        if r.chain_id != self.chain_id
            || r.provider != self.key.account()
            || query.receipt.verify().is_err()
        {
            return InclusionAnswer::Missing;
        }
        let (hash, epoch) = (query.receipt.hash(), r.epoch);
        let service = self.clone();
        let found = tokio::task::spawn_blocking(move || {
            service
                .receipts
                .locate_between(&hash, epoch, epoch.saturating_add(1))
        })
        .await;
        match found {
            Ok(Ok(Some((epoch, index, proof)))) => InclusionAnswer::Included {
                epoch,
                index,
                proof,
            },
            Ok(Ok(None)) => InclusionAnswer::Missing,
            Ok(Err(e)) => {
                tracing::warn!("inclusion query: {e}");
                InclusionAnswer::Missing
            }
            Err(e) => {
                tracing::warn!("inclusion query task: {e}");
                InclusionAnswer::Missing
            }
        }
    }
}
