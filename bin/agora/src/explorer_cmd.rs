//! `agora explorer`: the network's explorer on its own, reading a ledger; and the wiring that
//! puts the same explorer (with the offer book and the answers) inside `agora gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agora_broker::Broker;
use agora_explorer::{Config, Explorer, OfferRow, OfferSource};
use anyhow::Context;
use axum::response::Redirect;
use axum::routing::get;
use clap::Args;

use crate::net_args::announce;

/// Arguments of `agora explorer`.
#[derive(Args, Debug)]
pub struct ExplorerArgs {
    /// The ledger node to read.
    #[arg(long, default_value = "http://127.0.0.1:7420")]
    ledger: String,
    /// HTTP listen address (the pages are under /explorer; /metrics is beside them).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// A DiLoCo coordinator's run folder (`agora train --islands ... --out DIR`), to show its
    /// rounds and loss curve.
    #[arg(long, value_name = "RUN_DIR")]
    diloco: Option<PathBuf>,
    /// Also stop when stdin reaches its end.
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// Runs the standalone explorer until Ctrl-C.
pub fn run(args: ExplorerArgs) -> anyhow::Result<()> {
    agora_ledger::client::Client::new(&args.ledger)
        .with_context(|| format!("ledger URL {}", args.ledger))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut cfg = Config::new(&args.ledger);
        cfg.diloco = args.diloco.clone();
        let explorer = Explorer::new(cfg);
        explorer.clone().follow();
        let app = explorer
            .router()
            .merge(agora_metrics::router())
            .route("/", get(|| async { Redirect::to("/explorer") }))
            .layer(axum::middleware::from_fn(agora_metrics::track));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        announce(&format!("explorer http://{addr}/explorer"));
        tracing::info!(%addr, ledger = %args.ledger, "explorer listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(crate::shutdown::signal(args.stop_on_stdin_eof))
            .await?;
        anyhow::Ok(())
    })
}

/// The gateway's live offers, for its explorer (also keeps the live-offers gauge current).
pub fn offers_of(broker: Arc<Broker>) -> OfferSource {
    Arc::new(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let rows: Vec<OfferRow> = broker.with_book(|book| {
            let mut rows = Vec::new();
            for m in book.models(now) {
                for o in book.offers_for(&m.model) {
                    let offer = &o.offer;
                    if offer.expires_ms <= now {
                        continue;
                    }
                    let stats = book.stats(&offer.provider);
                    rows.push(OfferRow {
                        provider: offer.provider,
                        model: offer.model,
                        model_name: offer.model_name.clone(),
                        price_in: offer.price_in,
                        price_out: offer.price_out,
                        hardware: offer.hardware.clone(),
                        region: offer.region.clone(),
                        capacity: offer.capacity,
                        context_len: offer.context_len,
                        expires_ms: offer.expires_ms,
                        reputation: stats.reputation,
                        load: stats.load,
                        latency_ms: stats.latency_ms,
                    });
                }
            }
            rows
        });
        agora_metrics::gateway()
            .live_offers
            .set(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        rows
    })
}
