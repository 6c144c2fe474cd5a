//! An island: fetch the state, train a round, commit, reveal, then aggregate the round's
//! accepted contributions itself and check it reached the coordinator's state hash.

use std::sync::Arc;
use std::time::Duration;

use agora_core::Keypair;
use agora_diloco::run::{aggregate_round, screen_round, verify_state};
use agora_diloco::{Contribution, GlobalState, Island, StateHash};
use agora_net::protocol::{read_frame_max, write_frame_max};
use agora_net::{Node, PeerId, StreamProtocol};

use crate::coordinator::{corpus_for, trainer_for, Coordinator};
use crate::protocol::{Request, Response, RoundStatus, SignedRequest, MAX_MESSAGE_BYTES, PROTOCOL};
use crate::{IslandsError, RunSpec};

/// How an island reaches its coordinator: over libp2p, or in the same process (the island
/// that started the run).
#[derive(Clone)]
pub enum Link {
    /// A coordinator in another process.
    Remote {
        /// This island's node.
        node: Node,
        /// The coordinator's peer.
        peer: PeerId,
    },
    /// The coordinator in this process.
    Local(Coordinator),
}

/// Bytes an island sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Sent (requests, commitments, reveals).
    pub sent: u64,
    /// Received (states, contributions).
    pub received: u64,
}

impl Link {
    async fn exchange(node: &Node, peer: PeerId, req: &SignedRequest) -> Result<Response, String> {
        let exchange = async {
            let mut s = node
                .control()
                .open_stream(peer, StreamProtocol::new(PROTOCOL))
                .await
                .map_err(|e| e.to_string())?;
            write_frame_max(&mut s, req, MAX_MESSAGE_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            read_frame_max::<_, Response>(&mut s, MAX_MESSAGE_BYTES)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the coordinator closed the stream".to_string())
        };
        tokio::time::timeout(Duration::from_secs(120), exchange)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn call(
        &self,
        req: SignedRequest,
        traffic: &mut Traffic,
    ) -> Result<Response, IslandsError> {
        // Counted, not encoded again: states and contributions are large.
        traffic.sent += borsh::object_length(&req).unwrap_or(0) as u64;
        let response = match self {
            Link::Local(c) => c.handle(&req),
            Link::Remote { node, peer } => {
                // A stream can fail while the connection is still being set up, or when the
                // coordinator's accept queue overflows: retry a few times before giving up.
                let mut last = String::new();
                let mut answer = None;
                for attempt in 0..6u64 {
                    match Self::exchange(node, *peer, &req).await {
                        Ok(r) => {
                            answer = Some(r);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(attempt, "request to the coordinator failed: {e}");
                            last = e;
                            tokio::time::sleep(Duration::from_millis(250 * (attempt + 1))).await;
                        }
                    }
                }
                answer.ok_or(IslandsError::Coordinator(last))?
            }
        };
        traffic.received += borsh::object_length(&response).unwrap_or(0) as u64;
        Ok(response)
    }
}

/// What an island is told at start.
pub struct IslandOptions {
    /// Its number (it picks its data).
    pub island: u64,
    /// Its key (signs every request).
    pub key: Keypair,
    /// The run id to join.
    pub run: [u8; 32],
    /// The training text (must be the run's).
    pub text: String,
    /// Stop after this many rounds trained (tests use it to play a late island).
    pub max_rounds: Option<u64>,
}

/// How an island ended.
#[derive(Debug, Clone)]
pub struct IslandOutcome {
    /// The final global state's hash.
    pub final_hash: [u8; 32],
    /// Rounds completed by the run.
    pub rounds: u64,
    /// Rounds this island's contribution was accepted in.
    pub contributed: u64,
    /// Bytes exchanged with the coordinator.
    pub traffic: Traffic,
}

struct Ctx {
    link: Link,
    key: Keypair,
    run: [u8; 32],
    traffic: Traffic,
}

impl Ctx {
    async fn call(&mut self, request: Request) -> Result<Response, IslandsError> {
        let req = SignedRequest::new(self.run, request, &self.key);
        let link = self.link.clone();
        link.call(req, &mut self.traffic).await
    }

    /// Polls round `round` until `done` says its status is final enough.
    async fn wait_status(
        &mut self,
        round: u64,
        done: impl Fn(&RoundStatus) -> bool,
    ) -> Result<RoundStatus, IslandsError> {
        loop {
            match self.call(Request::Status { round }).await? {
                Response::Status(s) if done(&s) => return Ok(s),
                Response::Status(_) => {}
                other => return Err(IslandsError::Coordinator(format!("status: {other:?}"))),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn refused(what: &str, r: Response) -> IslandsError {
    match r {
        Response::Refused { reason } => IslandsError::Coordinator(format!("{what}: {reason}")),
        other => IslandsError::Coordinator(format!("{what}: unexpected answer {other:?}")),
    }
}

/// Joins the run and trains until it is finished (or `max_rounds` rounds were trained).
pub async fn run_island(opts: IslandOptions, link: Link) -> Result<IslandOutcome, IslandsError> {
    let mut ctx = Ctx {
        link,
        key: opts.key,
        run: opts.run,
        traffic: Traffic::default(),
    };
    let spec: RunSpec = match ctx
        .call(Request::Join {
            island: opts.island,
        })
        .await?
    {
        Response::Spec { json } => {
            serde_json::from_str(&json).map_err(|e| IslandsError::Spec(e.to_string()))?
        }
        r => return Err(refused("join", r)),
    };
    if spec.id()? != opts.run {
        return Err(IslandsError::Spec(
            "the coordinator's spec does not hash to the run id".into(),
        ));
    }
    let corpus = Arc::new(corpus_for(&spec, &opts.text)?);
    let mut island = Some(Island::new(
        opts.island,
        trainer_for(&spec)?,
        spec.island.clone(),
    )?);
    let mut global: Option<GlobalState> = None;
    let (mut trained, mut contributed) = (0u64, 0u64);
    tracing::info!(island = opts.island, run = %hex::encode(opts.run), "joined");
    loop {
        // 1. The state: fetched only when it is not the one already held.
        let have = global.as_ref().map(|g| g.hash().map(|h| h.0)).transpose()?;
        let (round, hash, finished) = match ctx.call(Request::State { have }).await? {
            Response::State {
                round,
                hash,
                blob,
                finished,
            } => {
                if have != Some(hash) {
                    let g = GlobalState::from_blob(StateHash(hash), &blob)?;
                    tracing::info!(island = opts.island, round, state = %hex::encode(hash), "fetched the global state");
                    global = Some(g);
                }
                (round, hash, finished)
            }
            r => return Err(refused("state", r)),
        };
        if finished || opts.max_rounds.is_some_and(|m| trained >= m) {
            tracing::info!(island = opts.island, rounds = round, contributed, sent = ctx.traffic.sent, received = ctx.traffic.received, state = %hex::encode(hash), "done");
            return Ok(IslandOutcome {
                final_hash: hash,
                rounds: round,
                contributed,
                traffic: ctx.traffic,
            });
        }
        let Some(g) = global.clone() else {
            return Err(IslandsError::Coordinator("no state".into()));
        };

        // 2. Train H inner steps (blocking work off the async threads).
        let (mut isl, corpus2, g2) = (
            island
                .take()
                .ok_or_else(|| IslandsError::Coordinator("island lost".into()))?,
            corpus.clone(),
            g.clone(),
        );
        let (isl, contribution) = tokio::task::spawn_blocking(move || {
            let c = isl.train_round(&corpus2, &g2);
            (isl, c)
        })
        .await
        .map_err(|e| IslandsError::Coordinator(e.to_string()))?;
        island = Some(isl);
        let contribution = contribution?;
        trained += 1;

        // 3. Commit, then wait for commitments to close and reveal.
        let committed = match ctx
            .call(Request::Commit {
                island: opts.island,
                round,
                base: hash,
                commitment: contribution.commitment,
            })
            .await?
        {
            Response::Ack => true,
            Response::Refused { reason } => {
                tracing::info!(
                    island = opts.island,
                    round,
                    "sitting this round out: {reason}"
                );
                false
            }
            r => return Err(refused("commit", r)),
        };
        let status = ctx
            .wait_status(round, |s| !matches!(s, RoundStatus::Committing))
            .await?;
        if committed {
            if let RoundStatus::Revealing { committed } = &status {
                if committed.contains(&opts.island) {
                    let bytes = contribution.to_bytes()?;
                    match ctx
                        .call(Request::Reveal {
                            island: opts.island,
                            round,
                            contribution: bytes,
                        })
                        .await?
                    {
                        Response::Ack => {
                            tracing::info!(island = opts.island, round, "revealed")
                        }
                        r => tracing::warn!(island = opts.island, round, "reveal: {:?}", r),
                    }
                }
            }
        }

        // 4. The round's outcome: aggregate it here and check the hash.
        let status = ctx
            .wait_status(round, |s| {
                matches!(s, RoundStatus::Closed { .. } | RoundStatus::Gone { .. })
            })
            .await?;
        let RoundStatus::Closed { accepted, next } = status else {
            continue; // Too late: resync from the state.
        };
        if accepted.iter().any(|(i, _)| *i == opts.island) {
            contributed += 1;
        }
        match aggregate_here(&mut ctx, &spec, &g, &accepted, next).await {
            Ok(state) => {
                tracing::info!(island = opts.island, round, accepted = accepted.len(), state = %hex::encode(next), "round agreed");
                global = Some(state);
            }
            Err(e) => {
                // Fall back to the coordinator's state, loudly: a mismatch means a bug or a
                // coordinator that did not follow the protocol.
                tracing::error!(
                    island = opts.island,
                    round,
                    "could not reproduce the round: {e}"
                );
                global = None;
            }
        }
    }
}

/// Fetches the accepted contributions and aggregates them locally; the result must hash to
/// `next`.
async fn aggregate_here(
    ctx: &mut Ctx,
    spec: &RunSpec,
    global: &GlobalState,
    accepted: &[(u64, [u8; 32])],
    next: [u8; 32],
) -> Result<GlobalState, IslandsError> {
    let mut contributions = Vec::with_capacity(accepted.len());
    for (island, commitment) in accepted {
        let bytes = match ctx
            .call(Request::Blob {
                commitment: *commitment,
            })
            .await?
        {
            Response::Blob(b) => b,
            r => return Err(refused("contribution", r)),
        };
        let c = Contribution::from_bytes(&bytes)?;
        if c.island != *island || c.commitment != *commitment || !c.commitment_holds() {
            return Err(IslandsError::Mismatch {
                round: global.round,
                detail: format!("island {island}'s contribution does not match its commitment"),
            });
        }
        contributions.push(c);
    }
    let (spec, global) = (spec.clone(), global.clone());
    let want: Vec<u64> = accepted.iter().map(|(i, _)| *i).collect();
    tokio::task::spawn_blocking(move || {
        let screened = screen_round(&global, contributions, &spec.checks, None)?;
        let got: Vec<u64> = screened.accepted.iter().map(|(c, _)| c.island).collect();
        if got != want {
            return Err(IslandsError::Mismatch {
                round: global.round,
                detail: format!("screening accepts {got:?}, the coordinator {want:?}"),
            });
        }
        let state = aggregate_round(&global, &screened.accepted, &spec.outer)?;
        verify_state(&state, StateHash(next))?;
        Ok(state)
    })
    .await
    .map_err(|e| IslandsError::Coordinator(e.to_string()))?
}
