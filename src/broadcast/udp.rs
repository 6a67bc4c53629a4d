//! UDP broadcasts: each pod's copy sent as datagrams from a task of its
//! own, answered 202 with what was sent, the report to `report_to` after.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Broadcaster, InFlight, NotStarted, Prepared, report_to};
use crate::fanout::PodRequest;
use crate::fanout::udp::UdpReport;
use crate::limit::Admitted;
use crate::load::Endpoint;
use crate::route::Route;
use crate::telemetry;

impl Broadcaster {
    /// Discovers the route's pods, runs the route's plugins, and sends
    /// each pod its copy of the request body as datagrams (refused with
    /// [`NotStarted::DatagramTooLarge`] before anything is sent when a copy
    /// would not fit the route's limit).
    pub async fn send_udp(
        self: &Arc<Self>,
        endpoint: Arc<Endpoint>,
        service: Option<String>,
        id: String,
        request: PodRequest,
        admitted: Admitted,
    ) -> Result<UdpReport, NotStarted> {
        let started = Instant::now();
        let Prepared {
            targets,
            requests,
            reserved,
            ..
        } = self
            .discover_and_prepare(&endpoint, service, &id, request, started)
            .await?;
        let route = &endpoint.route;
        let payloads: Vec<bytes::Bytes> = requests
            .iter()
            .map(|request| request.body.clone())
            .collect();
        let longest = payloads.iter().map(bytes::Bytes::len).max().unwrap_or(0);
        let size = broadcast_receiver::frame::encoded_len(&id, longest);
        if size > route.udp.max_datagram_bytes {
            return Err(NotStarted::DatagramTooLarge {
                size,
                limit: route.udp.max_datagram_bytes,
            });
        }
        let sequence = self.shared.sequence.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let span = tracing::info_span!("broadcast", route = %route.name, id = %id, sequence);
        let this = Arc::clone(self);
        self.shared.tasks.spawn(
            async move {
                let route = &endpoint.route;
                let started = Instant::now();
                let key = this.shared.next_key.fetch_add(1, Ordering::Relaxed);
                let _registered = InFlight::register(&this.shared.in_flight, key, &id, &route.name);
                endpoint.metrics.broadcast_started(targets.len());
                let results = this
                    .shared
                    .udp
                    .send(&targets, &id, sequence, &payloads, &route.udp)
                    .await;
                let sent: u32 = results.iter().map(|result| result.datagrams).sum();
                let expected = u32::from(route.udp.repeat) * targets.len() as u32;
                telemetry::datagrams(&route.name, "sent", u64::from(sent));
                telemetry::datagrams(&route.name, "error", u64::from(expected - sent));
                let datagram_bytes = size;
                let id_of_udp = id.clone();
                let report = UdpReport {
                    id,
                    route: route.name.to_string(),
                    protocol: "udp",
                    sequence,
                    ok: sent == expected,
                    targets: targets.len(),
                    repeat: route.udp.repeat,
                    datagram_bytes,
                    results,
                };
                endpoint
                    .metrics
                    .broadcast_finished(report.ok, started.elapsed());
                tracing::info!(
                    ok = report.ok,
                    targets = report.targets,
                    datagrams = sent,
                    "UDP broadcast sent."
                );
                drop((reserved, admitted));
                let json = this.serialize_for_collector(route, &report);
                let _ = answer.send(report);
                this.report(route, &id_of_udp, json).await;
            }
            .instrument(span),
        );
        Ok(answered.await.expect("a UDP broadcast task always answers"))
    }

    /// The report as JSON, when the route has a collector to send it to.
    fn serialize_for_collector(
        &self,
        route: &Route,
        report: &impl serde::Serialize,
    ) -> Option<bytes::Bytes> {
        route.report_to.as_ref()?;
        serde_json::to_vec(report)
            .inspect_err(|error| tracing::error!(%error, "Report could not be serialized."))
            .ok()
            .map(Into::into)
    }

    /// POSTs a finished UDP report to the route's collector (after the
    /// client has its answer, so a slow collector never delays clients).
    async fn report(&self, route: &Route, id: &str, json: Option<bytes::Bytes>) {
        if let (Some(to), Some(json)) = (&route.report_to, json) {
            let give_up = Instant::now() + to.retry_for;
            let client = self.shared.fanout.client();
            report_to::send(client, to, &route.name, id, json, give_up).await;
        }
    }
}
