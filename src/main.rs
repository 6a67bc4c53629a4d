//! The `broadcast-router` command: serve, check, resolve, demo, listen,
//! echo, plugin test and plugin inspect.

#![forbid(unsafe_code)]

/// mimalloc instead of glibc malloc: broadcasts allocate on one worker
/// thread and free on another, which glibc serves with lock contention
/// (about a quarter of the router's CPU at 10 pods in the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use broadcast_receiver::{self as receiver, Forwarder, Receiver, ReceiverOptions, Sink};
use broadcast_router::config::{Config, ConfigError};
use broadcast_router::discovery::kubernetes::Watches;
use broadcast_router::discovery::{Discovery, TargetSource};
use broadcast_router::load::Loaded;
use broadcast_router::reload::{self, Reloader, Snapshot};
use broadcast_router::route::Route;
use broadcast_router::telemetry::{self, LogFormat};
use broadcast_router::{demo, server};
use clap::{Args, Parser, Subcommand};

/// Deliver one HTTP request to every replica of a Kubernetes workload.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// How log lines are written (to stderr). RUST_LOG sets the filter.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured routes until SIGTERM or ctrl-c.
    Serve(ConfigArg),
    /// Validate a configuration file (and load its plugins) and print every problem with its location.
    Check(ConfigArg),
    /// Print the targets a route resolves to right now.
    Resolve {
        #[command(flatten)]
        config: ConfigArg,
        /// The route's name.
        route: String,
        /// For a templated route: the service name the path would carry.
        #[arg(long)]
        service: Option<String>,
    },
    /// Start echo pods on 127.0.0.2… and a router over them, then print a curl command to try.
    Demo {
        /// Address of the demo router's broadcast routes.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the demo router's admin endpoints.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// How many echo pods to start.
        #[arg(long, default_value_t = 3)]
        pods: usize,
    },
    /// On a pod: receive UDP broadcasts, drop repeated copies, and print each
    /// message as a JSON line on stdout (or POST it to a local URL).
    Listen(ListenArgs),
    /// Answer every HTTP request with 200 and a JSON echo of it (pod name,
    /// method, path, broadcast id, body size), logging each one: a receiver
    /// to try broadcasts against.
    Echo(EchoArgs),
    /// Test or inspect a plugin component without a router.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run a plugin's hooks on input given as JSON (config, request,
    /// targets, outcomes) and print each hook's result as JSON. Exits 1 if
    /// a hook failed. The plugin's own output goes to the log (stderr).
    Test {
        /// The plugin's .wasm component.
        file: PathBuf,
        /// The JSON input file, `-` for stdin. Keys: `config` (the route's
        /// config table), `request` (`method`, `path`, `headers`, `body`,
        /// `broadcast_id`), `targets` (`["ip:port", …]`), `outcomes` (each
        /// selected pod's `status`, `body`, `error`; default 200).
        #[arg(long, default_value = "-")]
        input: PathBuf,
        #[command(flatten)]
        limits: PluginLimits,
    },
    /// Print a component's world and version, hooks, imports, exports,
    /// initial memory, and whether this router can load it (and why not),
    /// as JSON.
    Inspect {
        /// The .wasm component.
        file: PathBuf,
        #[command(flatten)]
        limits: PluginLimits,
    },
}

#[derive(Args)]
struct PluginLimits {
    /// The plugin's memory cap, as `memory` in `[plugins.NAME]`.
    #[arg(long, default_value = "64MiB")]
    memory: String,
    /// CPU time one hook call may take, as `hook_timeout`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    hook_timeout: Duration,
}

#[derive(Args)]
struct EchoArgs {
    /// The address to serve on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The name the answers carry. Default: $HOSTNAME (in Kubernetes, the
    /// pod's name), else the host's name.
    #[arg(long, env = "POD_NAME")]
    name: Option<String>,
}

#[derive(Args)]
struct ListenArgs {
    /// The UDP port broadcasts arrive on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 12000)]
    port: u16,
    /// The address to receive on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// POST each payload to this http:// URL, with X-Broadcast-Id and
    /// X-Broadcast-Sequence headers, instead of printing it.
    #[arg(long, value_name = "URL")]
    forward_to: Option<http::Uri>,
    /// How many broadcast ids to remember for dropping duplicates.
    #[arg(long, default_value = "4096")]
    window: NonZeroUsize,
    /// How long to remember a broadcast id, e.g. 10m or 90s.
    #[arg(long, default_value = "10m", value_parser = parse_window_age)]
    window_age: Duration,
}

#[derive(Args)]
struct ConfigArg {
    /// The router's TOML configuration.
    #[arg(
        long,
        env = "BROADCAST_ROUTER_CONFIG",
        default_value = "config/router.toml"
    )]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log = telemetry::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(arg) => {
            serve_file(&arg.config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(arg) => Ok(check(&arg)),
        Command::Resolve {
            config,
            route,
            service,
        } => resolve(&load(&config)?, &route, service.as_deref()).await,
        Command::Demo {
            listen,
            admin_listen,
            pods,
        } => {
            let pods = demo::spawn_echo_pods(pods)
                .await
                .context("cannot start the demo pods")?;
            let config = demo::config(&pods, listen, admin_listen);
            let list: Vec<String> = pods.iter().map(ToString::to_string).collect();
            println!("Demo pods listening on {}", list.join(", "));
            println!("Router on http://{listen} (admin on http://{admin_listen}). Try:\n");
            println!(
                "  curl -s -X POST http://{listen}/cache/invalidate -H 'content-type: application/json' -d '{{\"key\":\"user:42\"}}'\n"
            );
            println!("Press ctrl-c to stop.");
            serve(&config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Listen(args) => {
            listen(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo(args) => {
            echo(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(command) => plugin_command(command),
    }
}

fn plugin_command(command: PluginCommand) -> anyhow::Result<ExitCode> {
    use broadcast_router::plugin::{inspect, tryout};
    match command {
        PluginCommand::Test {
            file,
            input,
            limits,
        } => {
            let text = if input == Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&input)
                    .with_context(|| format!("cannot read {}", input.display()))?
            };
            let input: tryout::Input = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid test input", input.display()))?;
            let (results, ok) = tryout::run(&file, &limits.memory, limits.hook_timeout, &input)?;
            println!("{}", serde_json::to_string_pretty(&results)?);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PluginCommand::Inspect { file, limits } => {
            let facts = inspect::inspect(&file, &limits.memory, limits.hook_timeout)?;
            println!("{}", serde_json::to_string_pretty(&facts)?);
            Ok(if facts["loadable"]["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&arg.config)?)
}

/// Serves the configuration file at `path`, reloading it (and its plugins)
/// when they change or on SIGHUP.
async fn serve_file(path: &Path) -> anyhow::Result<()> {
    let snapshot = Snapshot::read(path)?;
    let stop = shutdown_signal();
    let running = server::start_with(&snapshot.config, snapshot.origin.clone()).await?;
    let reloader = Reloader::new(Arc::clone(running.state()), path.to_owned(), &snapshot);
    let watching = reload::watch(Arc::new(reloader), true);
    drain_on_signal(running, stop).await?;
    watching.abort();
    Ok(())
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    drain_on_signal(server::start(config).await?, stop).await
}

/// Waits for `stop` (SIGTERM or ctrl-c), then drains the router.
async fn drain_on_signal(
    running: server::Running,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    stop.await;
    let durable = running.state().jobs().is_durable();
    let unfinished = running.shutdown().await;
    if !unfinished.is_empty() {
        let next = if durable {
            "they resume when a router starts on the same [jobs] store"
        } else {
            "they are lost (jobs are kept in memory without [jobs])"
        };
        bail!(
            "{} broadcast(s) did not finish within shutdown_grace: {}; {next}",
            unfinished.len(),
            unfinished.join(", ")
        );
    }
    Ok(())
}

/// Validates the configuration and loads everything it names, exactly as
/// `serve` and a reload would; prints a one-line summary, or every problem
/// as `FILE:LINE:COL: message`.
fn check(arg: &ConfigArg) -> ExitCode {
    let path = arg.config.display();
    let problems = match Config::load(&arg.config) {
        Ok(config) => match Loaded::load(&config) {
            Ok(loaded) => {
                let routes: Vec<String> =
                    loaded.endpoints.iter().map(ToString::to_string).collect();
                println!(
                    "{path}: ok, {} route(s): {}",
                    routes.len(),
                    routes.join("; ")
                );
                return ExitCode::SUCCESS;
            }
            Err(problems) => problems,
        },
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    for problem in &problems.0 {
        eprintln!("{path}:{problem}");
    }
    eprintln!("{path}: {} problem(s) found", problems.0.len());
    ExitCode::FAILURE
}

async fn resolve(config: &Config, name: &str, service: Option<&str>) -> anyhow::Result<ExitCode> {
    let Some(route) = config.route(name) else {
        let names: Vec<&str> = config.routes.iter().map(|route| route.name()).collect();
        bail!("no route named `{name}`; routes: {}", names.join(", "));
    };
    let route = Route::from_config(route);
    let service = route.service_name(service)?;
    let with_dns = matches!(route.source, TargetSource::Service { .. });
    let watches = Arc::new(Watches::new(&config.kubernetes));
    let discovery = Discovery::new(&config.dns, with_dns, watches)?;
    let targets = discovery.targets(&route.source, service.as_deref()).await?;
    for target in &targets {
        // Pods found through the API are named after their address.
        match target.pod_name() {
            Some(pod) => println!("{target} {pod}"),
            None => println!("{target}"),
        }
    }
    eprintln!(
        "route {name}: {} target(s){}",
        targets.len(),
        service.map(|s| format!(" from {s}")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let sink = match args.forward_to {
        Some(url) => Sink::Forward(Forwarder::new(url)?),
        None => Sink::Stdout,
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let options = ReceiverOptions {
        window: args.window.get(),
        window_age: args.window_age,
    };
    let receiver = Receiver::bind(addr, options)
        .await
        .with_context(|| format!("cannot receive on UDP {addr}"))?;
    receiver::run(receiver, sink, shutdown_signal()).await?;
    Ok(())
}

async fn echo(args: EchoArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let name = args.name.unwrap_or_else(demo::host_name);
    demo::serve_echo(listener, name, shutdown_signal())
        .await
        .context("the echo pod failed")
}

fn parse_window_age(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(age) if age.is_zero() => Err("the window age must be above zero".to_owned()),
        Ok(age) => Ok(age),
        Err(error) => Err(error.to_string()),
    }
}

/// Resolves at SIGTERM or ctrl-c. The handlers are installed when this is
/// called, not when the future is first polled: a command that says it is
/// listening has already taken over SIGTERM, so a stop sent right after
/// that line is a graceful one.
#[cfg(unix)]
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = term.recv() => {},
        }
    }
}

/// Resolves at ctrl-c.
#[cfg(not(unix))]
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
