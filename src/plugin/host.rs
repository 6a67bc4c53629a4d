//! The wasmtime host every plugin runs in: one engine per configuration
//! (pooling allocator, copy-on-write memory images, a compiled-code cache
//! on disk), the epoch ticker that cuts hook calls short, each instance's
//! memory cap, and the host state behind the imports plugins get (the log
//! interface and a WASI context without files, sockets or environment).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Contract, Hooks, PluginPre};
use super::output::{CallOutput, Output};
use super::run_plugins;
use crate::config::{Config, Instances, OnError, PluginConfig};

/// How often the epoch advances; hook timeouts are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Bytes at the start of each instance's memory kept resident between
/// broadcasts: the pages an instance wrote there are reset in place (found
/// with the `PAGEMAP_SCAN` ioctl where the kernel has it, Linux 6.7+), which
/// is cheaper than page faults on the next instance.
const KEEP_RESIDENT: usize = 256 << 10;

/// Concurrent plugin instances the pool holds (one per plugin per running
/// broadcast).
const POOL_INSTANCES: u32 = 1000;

/// Address space reserved for each plugin memory when the system allows:
/// all that a 32-bit memory can address, so that no load or store needs a
/// bounds check. The pool's memories take 8TiB of the 128TiB a process
/// has on x86-64 Linux.
const FULL_RESERVATION: u64 = 4 << 30;

/// The engine and linker every plugin of one configuration shares.
pub(super) struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Arc<EpochTicker>,
}

/// One loaded plugin: compiled, linked, its hooks known.
pub struct LoadedPlugin {
    /// The plugin's name (its `[plugins.NAME]` key).
    pub name: Arc<str>,
    /// The hooks it implements.
    pub hooks: Hooks,
    /// The version of the contract it was built for.
    pub contract: Contract,
    /// Its failure policy.
    pub on_error: OnError,
    /// Its memory cap in bytes.
    pub memory: usize,
    /// Its CPU budget per hook call.
    pub hook_timeout: Duration,
    /// Whether its instances are kept between broadcasts.
    pub instances: Instances,
    pre: PluginPre<HostState>,
    /// The compiled component (for `plugin inspect`).
    pub(super) component: Component,
    pub(super) engine: Engine,
    /// Keeps the epoch advancing while any plugin can still run.
    _ticker: Arc<EpochTicker>,
}

impl PluginHost {
    pub(super) fn new(config: &Config) -> Result<Self, String> {
        let largest_memory = config
            .plugins
            .values()
            .map(|plugin| plugin.memory.as_u64())
            .max()
            .unwrap_or(16 << 20);
        let largest_memory = usize::try_from(largest_memory).unwrap_or(usize::MAX);
        let cache_dir = config.server.plugin_cache_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir()
                .join("broadcast-router")
                .join("wasm-cache")
        });
        let cache = compiled_code_cache(cache_dir.clone())
            .inspect_err(|error| {
                tracing::warn!(
                    dir = %cache_dir.display(),
                    %error,
                    "Compiled plugin cache unavailable; plugins are compiled at every start."
                )
            })
            .ok();
        let engine = match Engine::new(&engine_config(largest_memory, FULL_RESERVATION, &cache)) {
            Ok(engine) => engine,
            Err(error) => {
                // Most likely the address space is short (another engine
                // still holds its pool, or a ulimit): reserve only the
                // memory cap, and pay for bounds checks instead.
                tracing::warn!(
                    %error,
                    "Cannot reserve 4GiB of address space per plugin memory; plugins run with bounds checks (slower)."
                );
                Engine::new(&engine_config(
                    largest_memory,
                    largest_memory as u64,
                    &cache,
                ))
                .map_err(|error| format!("cannot set up the Wasm engine: {error}"))?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|error| format!("cannot link WASI: {error}"))?;
        bindings::contract::add_to_linker(&mut linker)
            .map_err(|error| format!("cannot link the plugin imports: {error}"))?;
        Ok(Self {
            ticker: Arc::new(EpochTicker::start(engine.clone())),
            engine,
            linker,
        })
    }

    pub(super) fn load(&self, name: &str, config: &PluginConfig) -> Result<LoadedPlugin, String> {
        let bytes = std::fs::read(&config.path)
            .map_err(|error| format!("cannot read {}: {error}", config.path.display()))?;
        let component = Component::from_binary(&self.engine, &bytes).map_err(|error| {
            let error = format!("{error:#}");
            if error.contains("minimum byte size") {
                // The pooling allocator's words for "memory too small".
                format!(
                    "{} needs more memory at start than its `memory` cap ({}) allows; raise `memory` (Python plugins start at about 13MiB, JavaScript ones at about 9MiB): {error}",
                    config.path.display(),
                    config.memory
                )
            } else {
                format!("{} is not a loadable component: {error}", config.path.display())
            }
        })?;
        // The version first: a component built for another one would
        // otherwise be refused for imports the router does not provide.
        let contract = Contract::of(&component, &self.engine)
            .map_err(|error| format!("{} {error}", config.path.display()))?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|error| {
            format!(
                "{} imports something the router does not provide (plugins get the log interface and WASI 0.2, without files, sockets or environment): {error:#}",
                config.path.display()
            )
        })?;
        let pre = PluginPre::new(contract, instance_pre).map_err(|error| {
            let worlds = match contract {
                Contract::V0_1 => "the `plugin` world",
                Contract::V0_2 => "the `plugin` or the `plugin-json` world",
            };
            format!(
                "{} does not export {worlds} of {contract}: {error:#}",
                config.path.display()
            )
        })?;
        let mut plugin = LoadedPlugin {
            name: name.into(),
            hooks: Hooks::empty(),
            contract,
            on_error: config.on_error,
            memory: usize::try_from(config.memory.as_u64()).unwrap_or(usize::MAX),
            hook_timeout: config.hook_timeout,
            instances: config.instances,
            pre,
            component: component.clone(),
            engine: self.engine.clone(),
            _ticker: Arc::clone(&self.ticker),
        };
        plugin.hooks = run_plugins(|| {
            let (mut store, instance) = plugin
                .instantiate_within("load", "-", LOAD_BUDGET.max(config.hook_timeout))
                .map_err(|error| {
                    format!(
                        "cannot be instantiated: {}",
                        explain(&error, &CallOutput::default())
                    )
                })?;
            let hooks = instance.call_hooks(&mut store);
            let output = store.data().output.take();
            output.log(name, "-", "-", "load");
            hooks.map_err(|error| format!("trapped in `hooks`: {}", explain(&error, &output)))
        })?;
        tracing::info!(
            plugin = name,
            path = %config.path.display(),
            hooks = ?plugin.hooks,
            contract = contract.version(),
            world = plugin.world(),
            "Plugin loaded."
        );
        Ok(plugin)
    }
}

/// Wall time a plugin's start-up and `init` may take when it is loaded.
const LOAD_BUDGET: Duration = Duration::from_secs(2);

impl LoadedPlugin {
    /// The world it exports: `plugin`, or `plugin-json`.
    pub fn world(&self) -> &'static str {
        self.pre.world()
    }

    /// A fresh instance in a fresh store with this plugin's limits.
    pub(super) fn instantiate(
        &self,
        route: &str,
        broadcast_id: &str,
    ) -> wasmtime::Result<(Store<HostState>, bindings::Plugin)> {
        self.instantiate_within(route, broadcast_id, self.hook_timeout)
    }

    /// A fresh instance whose start-up may take `budget` of wall time.
    fn instantiate_within(
        &self,
        route: &str,
        broadcast_id: &str,
        budget: Duration,
    ) -> wasmtime::Result<(Store<HostState>, bindings::Plugin)> {
        let state = HostState::new(self, route, broadcast_id);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(ticks(budget));
        let instance = self.pre.instantiate(&mut store)?;
        Ok((store, instance))
    }

    /// Runs `init` with `config` on a throwaway instance. Loading is not
    /// on any request's path, so it gets [`LOAD_BUDGET`] of wall time
    /// rather than `hook_timeout`: a busy machine must not reject a
    /// well-behaved plugin, while one that never returns is still stopped.
    pub(super) fn check_init(&self, config: &str) -> Result<(), String> {
        let budget = LOAD_BUDGET.max(self.hook_timeout);
        run_plugins(|| {
            let (mut store, instance) =
                self.instantiate_within("check", "-", budget)
                    .map_err(|error| {
                        format!(
                            "cannot be instantiated: {}",
                            explain(&error, &CallOutput::default())
                        )
                    })?;
            store.set_epoch_deadline(ticks(budget));
            let result = instance.call_init(&mut store, config);
            let output = store.data().output.take();
            output.log(&self.name, "check", "-", "init");
            match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(format!("rejected its config: {message}")),
                Err(error) => Err(format!("trapped in `init`: {}", explain(&error, &output))),
            }
        })
    }
}

/// A trap's message, followed by the end of what the plugin wrote to
/// stderr (or stdout) during the call: a Python traceback, a JavaScript
/// error's message.
pub(super) fn explain(error: &wasmtime::Error, output: &CallOutput) -> String {
    // A trap's own message, without the wasm backtrace around it.
    let error = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    match output.quote() {
        Some(quote) => format!("{error}; the plugin wrote:\n{quote}"),
        None => error,
    }
}

/// The engine's settings: the pooling allocator sized for [`POOL_INSTANCES`]
/// with memories of at most `largest_memory` bytes, each in `reservation`
/// bytes of address space.
fn engine_config(
    largest_memory: usize,
    reservation: u64,
    cache: &Option<wasmtime::Cache>,
) -> wasmtime::Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 4)
        .total_memories(POOL_INSTANCES * 2)
        .total_tables(POOL_INSTANCES * 4)
        .total_stacks(POOL_INSTANCES)
        .max_memory_size(largest_memory)
        // Reset the first pages of a returned instance's memory in place
        // instead of handing them back to the kernel: the next broadcast's
        // instance then starts without page faults, madvise calls and TLB
        // shoot-downs for them. Plugins built by plugins/build.sh have a
        // 128KiB stack, so their stack, data and first heap pages fit.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(16 << 10)
        // Reset only the pages an instance actually wrote: a plugin
        // touches a few pages at the top of its stack, not all 128KiB of
        // it. Without the ioctl (older kernels, other systems) the whole
        // kept region is reset.
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = wasmtime::Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // With all of a 32-bit memory's 4GiB reserved (address space only:
        // the pages behind the cap stay inaccessible, and the cap is
        // enforced when a memory grows), compiled code needs no bounds
        // check on loads and stores; an interpreter compiled to Wasm
        // (SpiderMonkey, CPython) does little else. The guard pages
        // behind it cover static offsets up to 64KiB.
        .memory_reservation(reservation)
        .memory_reservation_for_growth(0)
        .memory_guard_size(64 << 10)
        .memory_init_cow(true)
        .epoch_interruption(true)
        .wasm_component_model(true)
        .cache(cache.clone());
    config
}

fn compiled_code_cache(dir: PathBuf) -> wasmtime::Result<wasmtime::Cache> {
    std::fs::create_dir_all(&dir)?;
    let mut cache_config = wasmtime::CacheConfig::new();
    cache_config.with_directory(dir);
    wasmtime::Cache::new(cache_config)
}

/// Epoch ticks covering `duration` (at least one).
pub(super) fn ticks(duration: Duration) -> u64 {
    (duration.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("the epoch thread starts");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What one plugin instance's store holds.
pub(super) struct HostState {
    /// Built on the first WASI call: most broadcasts never make one.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    /// The plugin's stdout and stderr, drained after every call.
    pub(super) output: Output,
    plugin: Arc<str>,
    /// The route the instance serves (for log lines).
    pub(super) route: Arc<str>,
    /// The broadcast the instance serves now (for log lines).
    pub(super) broadcast_id: Arc<str>,
}

impl HostState {
    fn new(plugin: &LoadedPlugin, route: &str, broadcast_id: &str) -> Self {
        Self {
            wasi: None,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(plugin.memory),
            output: Output::default(),
            plugin: plugin.name.clone(),
            route: route.into(),
            broadcast_id: broadcast_id.into(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // No preopened directories, no environment, no sockets; stdout
        // and stderr go to memory, and from there to the log.
        let output = &self.output;
        let ctx = self.wasi.get_or_insert_with(|| {
            WasiCtx::builder()
                .stdout(output.stdout())
                .stderr(output.stderr())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build()
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

// One host for both versions: 0.1.0's bindings reuse these interfaces.
impl bindings::broadcast::plugin::types::Host for HostState {}

impl bindings::broadcast::plugin::log::Host for HostState {
    fn log(
        &mut self,
        level: bindings::broadcast::plugin::log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        use bindings::broadcast::plugin::log::Level;
        let message: String = message.chars().take(4096).collect();
        let fields: Vec<String> = fields
            .iter()
            .take(32)
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let fields = fields.join(" ");
        let (route, plugin, id) = (&*self.route, &*self.plugin, &*self.broadcast_id);
        match level {
            Level::Trace => tracing::trace!(route, plugin, id, fields, "{message}"),
            Level::Debug => tracing::debug!(route, plugin, id, fields, "{message}"),
            Level::Info => tracing::info!(route, plugin, id, fields, "{message}"),
            Level::Warn => tracing::warn!(route, plugin, id, fields, "{message}"),
            Level::Error => tracing::error!(route, plugin, id, fields, "{message}"),
        }
    }
}

/// `StoreLimits` for one instance, remembering whether the cap was hit so
/// the resulting trap can be reported as "memory limit".
pub(super) struct MemoryLimiter {
    limits: wasmtime::StoreLimits,
    cap: usize,
    pub(super) exceeded: bool,
    /// The size the first memory was created with.
    initial: Option<usize>,
    /// The largest size any memory grew to.
    peak: usize,
}

impl MemoryLimiter {
    fn new(cap: usize) -> Self {
        Self {
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(cap)
                .instances(16)
                .tables(64)
                .memories(4)
                .build(),
            cap,
            exceeded: false,
            initial: None,
            peak: 0,
        }
    }

    /// Whether the instance has used more than half of the room it had
    /// above its initial memory: a reused instance whose heap keeps growing
    /// (a garbage collector that never returns memory) is retired before
    /// it hits the cap and fails a broadcast.
    pub(super) fn past_half(&self) -> bool {
        let initial = self.initial.unwrap_or(0);
        self.peak.saturating_sub(initial) > self.cap.saturating_sub(initial) / 2
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if current == 0 && self.initial.is_none() {
            self.initial = Some(desired);
        }
        if allowed {
            self.peak = self.peak.max(desired);
        }
        if !allowed {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit of {} bytes reached (asked for {desired})",
                self.cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
