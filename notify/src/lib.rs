//! jitgate notifications: what is told, how it looks in each sink format, and how one
//! message reaches one sink safely.
//!
//! This crate owns
//! - the **events** ([`event`]): a stable id, a type, a time, and what the event is about
//!   (request, VMs and ports, requester, approvers, justification, reasons), plus a link to
//!   the request and the CLI command that acts on it; camelCase JSON, the `webhook` body;
//! - the **sinks** ([`sink`]): name, wanted event types, scope (`rg:NAME`, `vm:NAME`),
//!   format, target, secret name, `--to-group`; validated with clear errors; shown redacted;
//! - the **rendering** per format ([`render`]): signed webhook JSON ([`signature`]), Slack
//!   Block Kit, a Teams workflow message with an Adaptive Card, and email (text + HTML), each
//!   escaping text people wrote for its own markup ([`text`]);
//! - **delivering** one rendered message to one sink ([`deliver`]): SSRF-guarded
//!   ([`egress`], [`resolve`]), https only unless configured, no redirects, one total timeout,
//!   no response body kept, the result an [`Outcome`] (status class, short error kind,
//!   `Retry-After`);
//! - the **retry schedule** ([`backoff`]): a pure function from attempt count and last outcome
//!   to the next attempt time or dead;
//! - the **secrets** ([`secrets`]): named, write-only entries in a 0700 directory;
//! - the **configuration** ([`config`]): `[notify]` in controller.toml.
//!
//! It does not own storage, scheduling or the API: the controller does (below).
//!
//! # How it plugs into the controller
//!
//! The controller (after its restructuring) adds, in this order:
//!
//! 1. **Events in the same transaction as the state change.** Wherever a request is
//!    decided, approved, denied, cancelled, timed out, applied or ended, an agent goes
//!    offline or comes back, compliance flips, a break-glass record arrives or a policy is
//!    written, the controller builds an [`Event`] (`Event::new(details, now, portal)`) and
//!    inserts one `notify_events` row **inside the transaction that makes the change**, so
//!    both commit or neither does. Nothing else happens on the request path: no sink lookup,
//!    no network, no rendering (one small insert, which keeps initiate throughput within a
//!    few percent whatever the sinks do).
//!
//! 2. **The outbox tables** (a migration numbered by the lead; portable SQLite/PostgreSQL:
//!    `BIGINT`/`TEXT`, times in ms since the epoch):
//!
//!    ```sql
//!    CREATE TABLE notify_sinks (
//!        name TEXT PRIMARY KEY,
//!        spec TEXT NOT NULL,           -- SinkSpec JSON (full target: a Slack/Teams URL is a
//!                                      -- credential; only Sink::view ever leaves the server)
//!        created_by TEXT NOT NULL,
//!        created_at BIGINT NOT NULL,
//!        updated_at BIGINT NOT NULL
//!    );
//!    CREATE TABLE notify_events (
//!        seq BIGINT PRIMARY KEY,       -- from the counters table ('notify'), commit order
//!        id TEXT NOT NULL UNIQUE,      -- EventId = Jitgate-Delivery
//!        event_type TEXT NOT NULL,     -- EventType::as_str
//!        order_key TEXT NOT NULL,      -- Event::order_key: request id, or the VM
//!        body TEXT NOT NULL,           -- the Event JSON
//!        people TEXT NOT NULL,         -- JSON [{displayName, address}] resolved at commit
//!        created_at BIGINT NOT NULL
//!    );
//!    -- the seq up to which events are fanned out: one number, not a flag per event
//!    INSERT INTO counters (name, value, hash) VALUES ('notify_fanned', 0, '');
//!    CREATE TABLE notify_deliveries (
//!        event_seq BIGINT NOT NULL REFERENCES notify_events (seq) ON DELETE CASCADE,
//!        sink TEXT NOT NULL REFERENCES notify_sinks (name) ON DELETE CASCADE,
//!        order_key TEXT NOT NULL,
//!        state TEXT NOT NULL,          -- DeliveryState::as_str: queued|retrying|delivered|dead
//!        attempts BIGINT NOT NULL DEFAULT 0,
//!        first_attempt_at BIGINT,      -- start of the give-up window
//!        next_attempt_at BIGINT NOT NULL,
//!        lease_owner TEXT,             -- controller instance id
//!        lease_until BIGINT,
//!        last_attempt_at BIGINT,
//!        last_kind TEXT,               -- FailureKind::as_str or 'delivered'
//!        last_status TEXT,             -- StatusClass::as_str
//!        last_detail TEXT,             -- Failure::detail (never a response body or URL)
//!        delivered_at BIGINT,
//!        PRIMARY KEY (event_seq, sink)
//!    );
//!    CREATE INDEX notify_deliveries_order ON notify_deliveries (sink, order_key, event_seq);
//!    -- the pending deliveries no controller holds, for the claim and the look for work
//!    CREATE INDEX notify_deliveries_claim ON notify_deliveries (sink, event_seq)
//!        WHERE state IN ('queued', 'retrying') AND lease_owner IS NULL;
//!    CREATE INDEX notify_deliveries_due ON notify_deliveries (state, next_attempt_at)
//!        WHERE state IN ('queued', 'retrying') AND lease_owner IS NULL;
//!    -- the leased ones by lease end, for the reclaim of expired leases
//!    CREATE INDEX notify_deliveries_leased ON notify_deliveries (lease_until)
//!        WHERE lease_owner IS NOT NULL;
//!    ```
//!
//! 3. **The worker**, one task per controller, on every controller:
//!    - *Fan-out* (under a database lease row `notify-fanout`, so one controller does it):
//!      reads the `notify_events` after the `notify_fanned` mark in `seq` order (commit
//!      order, under the counters lock, so the events fanned out are those up to a seq),
//!      matches each against the sinks ([`Sink::wants`]) and inserts one `queued` delivery
//!      per matching sink (already claimed, as below, when the sink has room and no earlier
//!      delivery of the same `order_key` to it is pending), then moves the mark to the last
//!      event read, all in one transaction (the event rows are never written again). A
//!      sink added later does not receive old events; a removed sink's deliveries go with
//!      it.
//!    - *Reclaim*: `UPDATE notify_deliveries SET lease_owner = NULL, lease_until = NULL
//!      WHERE lease_owner IS NOT NULL AND lease_until < $now`: an expired lease (its
//!      controller died or stalled) makes its delivery pending again, for the claim.
//!    - *Claim*: `UPDATE notify_deliveries SET lease_owner = $me, lease_until = $now +
//!      $lease, attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, $now)
//!      WHERE sink = $sink AND lease_owner IS NULL AND state IN ('queued','retrying') AND
//!      next_attempt_at <= $now AND event_seq IN (SELECT d.event_seq FROM notify_deliveries
//!      d WHERE d.sink = $sink AND d.state IN ('queued','retrying') AND d.lease_owner IS
//!      NULL AND d.next_attempt_at <= $now AND NOT EXISTS (SELECT 1 FROM
//!      notify_deliveries p WHERE p.sink = d.sink AND p.order_key = d.order_key AND
//!      p.event_seq < d.event_seq AND p.state IN ('queued','retrying')) ORDER BY
//!      d.event_seq LIMIT $n) RETURNING ...` (the candidates from
//!      `notify_deliveries_claim`, which holds no leased delivery). The repeated lease
//!      condition makes the claim atomic per row on both databases (PostgreSQL re-checks it
//!      after a row lock; SQLite has one writer), so
//!      each delivery is attempted by one controller at a time. The `NOT EXISTS` clause is
//!      **per-request ordering**: a later event for the same sink and `order_key` waits
//!      until the earlier one is delivered or dead.
//!    - *Attempt*: [`Deliverer::deliver`] (one total timeout; the lease is the timeout plus a
//!      margin). Attempts run concurrently, at most a few per sink (a semaphore per sink), so
//!      a hanging sink holds only its own slots and never delays others or any request.
//!    - *Record*, fenced by the lease: `UPDATE ... SET state, next_attempt_at, last_*,
//!      lease_owner = NULL, lease_until = NULL WHERE event_seq = $ AND sink = $ AND
//!      lease_owner = $me`. Delivered → `delivered`; a failure → [`backoff::next_attempt`]
//!      (`retrying` at the time it gives, or `dead`). If the lease was lost (this controller
//!      stalled past it), the update changes nothing; the other controller's attempt stands.
//!      A controller killed mid-attempt leaves a lease that expires and the delivery is
//!      taken again: at least once, and receivers de-duplicate on `Jitgate-Delivery`.
//!    - *Wake-up*: after a commit that wrote events, the writing controller wakes its own
//!      worker (in-process notify); all workers also poll every second, so another
//!      controller's events are picked up within a second.
//!    - *Pruning* (lease `notify-prune`, hourly): delivered rows older than
//!      `retain_delivered_days`, then events with no delivery left; dead ones stay until
//!      `jit notify retry` (state back to `retrying`, `attempts = 0`, `first_attempt_at =
//!      NULL`, `next_attempt_at = now`) or an admin prunes them.
//!    - *Status* (`jit notify status`): counts per sink and state, the last failure's kind,
//!      status class and time; metrics: queue depth (queued + retrying) and delivery lag
//!      (`delivered_at - created_at`). Sending is audited in counts only.
//!
//! 4. **API and CLI** (`jit notify add|list|remove|test|status|retry`, secrets upload):
//!    `add` runs [`Sink::from_spec`] (with the configuration's [`SinkRules`]),
//!    [`Sink::check_secret`] against the [`SecretStore`] and [`Deliverer::check_target`]
//!    (the URL must resolve to allowed addresses) before storing anything, and checks that
//!    the sink's scope lies within the admin's (only scope `*` creates unscoped sinks).
//!    Responses show [`Sink::view`] (redacted). `test` sends [`examples::sample`]. Secret
//!    upload is [`SecretStore::put`]; nothing reads a secret back.

pub mod backoff;
pub mod config;
pub mod deliver;
pub mod egress;
pub mod event;
pub mod examples;
pub mod message;
pub mod outcome;
pub mod render;
pub mod resolve;
pub mod secrets;
pub mod signature;
pub mod sink;
pub mod sink_url;
pub mod text;

pub use backoff::{DeliveryState, Next, RetryPolicy, next_attempt};
pub use config::NotifyConfig;
pub use deliver::{DeliverError, Deliverer, DeliveryConfig, SmtpRelay, SmtpSecurity, TlsRoots};
pub use egress::EgressPolicy;
pub use event::{Event, EventDetails, EventId, EventType};
pub use lettre::Address as EmailAddress;
pub use outcome::{Failure, FailureKind, Outcome, StatusClass};
pub use render::email::Person;
pub use secrets::{SecretName, SecretStore};
pub use signature::verify_signature;
pub use sink::{Sink, SinkFormat, SinkRules, SinkSpec};
pub use sink_url::SinkUrl;
