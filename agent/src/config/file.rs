//! `linkmesh agent --config FILE`: every agent option from a TOML file.
//!
//! Keys are the long option names (`etcd-server`, `segment`,
//! `keepalive-interval`, ...). Precedence is flag > environment > file >
//! default: the file's settings go into the argument list ahead of the
//! command line (where a later flag overrides them), and only for options
//! whose `LINKMESH_*` variable is not set (where clap lets the variable
//! win). Unknown keys are errors that name the key.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, Command};

/// Keys that make no sense inside the file.
const NOT_IN_FILE: [&str; 3] = ["config", "check-config", "help"];

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: unknown key `{key}` (keys are the long option names of `linkmesh agent`)")]
    UnknownKey { path: PathBuf, key: String },
    #[error("{path}: `{key}` {problem}")]
    BadValue {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// What the file contributed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The argument list to parse.
    pub args: Vec<OsString>,
    /// Options the file set (and that no variable overrode).
    pub from_file: BTreeSet<String>,
}

/// Where `--config` (or `LINKMESH_CONFIG`) points, if anywhere.
fn config_path(args: &[OsString], env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    env("LINKMESH_CONFIG").map(PathBuf::from)
}

/// Whether `arg` is given on the command line itself.
fn on_command_line(args: &[OsString], arg: &Arg) -> bool {
    let long = arg.get_long().map(|l| format!("--{l}"));
    let short = arg.get_short().map(|c| format!("-{c}"));
    args.iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| {
            long.as_ref()
                .is_some_and(|l| a == l.as_str() || a.starts_with(&format!("{l}=")))
                || short.as_ref().is_some_and(|s| a.starts_with(s.as_str()))
        })
}

/// One option's value as command-line arguments.
fn to_args(
    path: &Path,
    arg: &Arg,
    key: &str,
    value: &toml::Value,
) -> Result<Vec<String>, FileError> {
    let bad = |problem: &str| FileError::BadValue {
        path: path.to_owned(),
        key: key.to_owned(),
        problem: problem.to_owned(),
    };
    let flag = format!("--{key}");
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        _ => Err(bad("must be a string or a number")),
    };
    if !arg.get_action().takes_values() {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![flag]),
            toml::Value::Boolean(false) => Ok(vec![]),
            _ => Err(bad("is a switch: true or false")),
        };
    }
    match value {
        toml::Value::Array(items) => {
            if !matches!(arg.get_action(), clap::ArgAction::Append) {
                return Err(bad("takes one value, not a list"));
            }
            let values = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            if values.iter().any(|v| v.contains(',')) {
                return Err(bad("list items must not contain commas"));
            }
            Ok(if values.is_empty() {
                vec![]
            } else {
                vec![flag, values.join(",")]
            })
        }
        other => Ok(vec![flag, scalar(other)?]),
    }
}

/// Expands `--config FILE` for `linkmesh agent ARGS`: `agent_args` are the
/// arguments after `agent`, `command` is the agent's clap command (for the
/// known keys), `env` reads the environment.
pub fn expand(
    agent_args: &[OsString],
    command: &Command,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, FileError> {
    let Some(path) = config_path(agent_args, env) else {
        return Ok(Expanded {
            args: agent_args.to_vec(),
            from_file: BTreeSet::new(),
        });
    };
    let text = std::fs::read_to_string(&path).map_err(|source| FileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FileError::Syntax {
            path: path.clone(),
            message: e.message().to_owned(),
        })?;
    let mut args: Vec<OsString> = Vec::new();
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| FileError::UnknownKey {
                path: path.clone(),
                key: key.clone(),
            })?;
        let converted = to_args(&path, arg, key, value)?;
        // A flag beats the file (lists would otherwise add up), and the
        // environment beats the file: leave the option to clap.
        if on_command_line(agent_args, arg)
            || arg
                .get_env()
                .is_some_and(|name| env(&name.to_string_lossy()).is_some())
        {
            continue;
        }
        if !converted.is_empty() {
            from_file.insert(key.clone());
        }
        args.extend(converted.into_iter().map(OsString::from));
    }
    args.extend(agent_args.iter().cloned());
    Ok(Expanded { args, from_file })
}

/// The effective configuration as TOML-like lines, each with where it came
/// from; secrets are redacted.
#[must_use]
pub fn describe(
    command: &Command,
    matches: &clap::ArgMatches,
    from_file: &BTreeSet<String>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# effective configuration of `linkmesh agent` (flag > environment > file > default)\n",
    );
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if NOT_IN_FILE.contains(&long) || long == "version" {
            continue;
        }
        let Some(values) = matches.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) if from_file.contains(long) => "file",
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) => "environment",
            _ => "default",
        };
        // TOML: numbers and switches bare, everything else quoted.
        let item = |v: &String| {
            if v.parse::<f64>().is_ok() || v == "true" || v == "false" {
                v.clone()
            } else {
                format!("{v:?}")
            }
        };
        let shown = if long == "secret" {
            "\"<redacted>\"".to_owned()
        } else if matches!(arg.get_action(), clap::ArgAction::Append) {
            let items: Vec<String> = values.iter().map(item).collect();
            format!("[{}]", items.join(", "))
        } else {
            item(&values.join(","))
        };
        let _ = writeln!(out, "{long} = {shown}  # {source}");
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::config::AgentArgs;

    #[derive(Parser)]
    #[command(args_override_self = true)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn command() -> Command {
        Cli::command()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("writing");
        f
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<(AgentArgs, Expanded), FileError> {
        let env_map: std::collections::BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = |k: &str| env_map.get(k).cloned();
        let expanded = expand(&os(args), &command(), &lookup)?;
        let mut line = vec![OsString::from("linkmesh")];
        line.extend(expanded.args.iter().cloned());
        // The environment is simulated: clap reads the real one, so only
        // variables no test sets are used here.
        let cli = Cli::try_parse_from(line).expect("parses");
        Ok((cli.agent, expanded))
    }

    #[test]
    fn the_file_sets_options_and_flags_override_it() {
        let f = file(
            "etcd-server = [\"http://a:1\", \"http://b:2\"]\nsegment = [\"blue\"]\nkeepalive-interval = 4\n\
             health-check-interval = 0.5\ncleanup-on-exit = true\nhostname = \"web-1\"\n",
        );
        let path = f.path().to_str().expect("utf-8");
        let (a, e) = parse(&["--config", path], &[]).expect("expands");
        assert_eq!(a.etcd.etcd_servers, ["http://a:1", "http://b:2"]);
        assert_eq!(a.segments, ["blue"]);
        assert_eq!(a.keepalive_interval, 4);
        assert!((a.health_check_interval - 0.5).abs() < f64::EPSILON);
        assert!(a.cleanup_on_exit);
        assert_eq!(a.hostname.as_deref(), Some("web-1"));
        assert!(e.from_file.contains("segment"));

        let (a, _) = parse(
            &[
                "--config",
                path,
                "--segment",
                "red",
                "--keepalive-interval",
                "6",
            ],
            &[],
        )
        .expect("expands");
        assert_eq!(a.segments, ["red"], "a flag replaces the file's list");
        assert_eq!(a.keepalive_interval, 6, "a flag beats the file");
    }

    #[test]
    fn a_set_variable_beats_the_file() {
        let f = file("hostname = \"from-file\"\nttl = 20\n");
        let path = f.path().to_str().expect("utf-8");
        let lookup = |k: &str| (k == "LINKMESH_HOSTNAME").then(|| "from-env".to_owned());
        let e = expand(&os(&["--config", path]), &command(), &lookup).expect("expands");
        assert!(!e.from_file.contains("hostname"), "left to the variable");
        assert!(e.from_file.contains("ttl"));
        let args: Vec<String> = e
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.contains(&"from-file".to_owned()), "{args:?}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let f = file("segmnet = [\"blue\"]\n");
        let path = f.path().to_str().expect("utf-8");
        let e = parse(&["--config", path], &[]).expect_err("unknown key");
        assert!(e.to_string().contains("unknown key `segmnet`"), "{e}");
        let f = file("cleanup-on-exit = \"yes\"\n");
        let e = parse(&["--config", f.path().to_str().expect("utf-8")], &[]).expect_err("bad");
        assert!(
            e.to_string().contains("`cleanup-on-exit` is a switch"),
            "{e}"
        );
        let f = file("ttl = [1, 2]\n");
        let e = parse(&["--config", f.path().to_str().expect("utf-8")], &[]).expect_err("bad");
        assert!(e.to_string().contains("`ttl` takes one value"), "{e}");
        let f = file("config = \"/x\"\n");
        let e = parse(&["--config", f.path().to_str().expect("utf-8")], &[]).expect_err("bad");
        assert!(e.to_string().contains("unknown key `config`"), "{e}");
        let f = file("ttl = \n");
        let e = parse(&["--config", f.path().to_str().expect("utf-8")], &[]).expect_err("syntax");
        assert!(e.to_string().contains("is not valid TOML"), "{e}");
        let e = parse(&["--config", "/nonexistent/linkmesh.toml"], &[]).expect_err("missing");
        assert!(
            e.to_string().contains("reading /nonexistent/linkmesh.toml"),
            "{e}"
        );
    }

    #[test]
    fn the_description_redacts_the_secret_and_names_sources() {
        let f = file("secret = \"s3cret-value-0123456789\"\nsegment = [\"blue\"]\n");
        let path = f.path().to_str().expect("utf-8");
        let lookup = |_: &str| None;
        let e =
            expand(&os(&["--config", path, "--ttl", "30"]), &command(), &lookup).expect("expands");
        let mut line = vec![OsString::from("linkmesh")];
        line.extend(e.args.iter().cloned());
        let matches = command().try_get_matches_from(line).expect("parses");
        let text = describe(&command(), &matches, &e.from_file);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("secret = \"<redacted>\"  # file"), "{text}");
        assert!(text.contains("segment = [\"blue\"]  # file"), "{text}");
        assert!(text.contains("ttl = 30  # flag"), "{text}");
        assert!(
            text.contains("cleanup-on-exit = false  # default"),
            "{text}"
        );
        assert!(text.contains("prefix = \"/linkmesh\"  # default"), "{text}");
    }
}
