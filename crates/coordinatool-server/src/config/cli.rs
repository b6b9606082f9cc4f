//! A small `getopt_long` work-alike for the server's command line.
//!
//! It follows glibc's rules, which upstream relies on: options and operands may be mixed
//! (operands are collected wherever they are), `--` ends the options, short options can be
//! bundled (`-vvq`, `-A1`), long options take `--opt=value` or `--opt value` and may be
//! abbreviated to any unambiguous prefix.

/// Which option was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OptId {
    Verbose,
    Quiet,
    Config,
    Archive,
    Port,
    Host,
    RedisHost,
    RedisPort,
    ClientGrace,
    Version,
    Help,
}

struct OptSpec {
    short: Option<char>,
    long: &'static str,
    takes_arg: bool,
    id: OptId,
}

const OPTS: &[OptSpec] = &[
    OptSpec {
        short: Some('v'),
        long: "verbose",
        takes_arg: false,
        id: OptId::Verbose,
    },
    OptSpec {
        short: Some('q'),
        long: "quiet",
        takes_arg: false,
        id: OptId::Quiet,
    },
    OptSpec {
        short: Some('c'),
        long: "config",
        takes_arg: true,
        id: OptId::Config,
    },
    OptSpec {
        short: Some('A'),
        long: "archive",
        takes_arg: true,
        id: OptId::Archive,
    },
    OptSpec {
        short: Some('p'),
        long: "port",
        takes_arg: true,
        id: OptId::Port,
    },
    OptSpec {
        short: Some('H'),
        long: "host",
        takes_arg: true,
        id: OptId::Host,
    },
    OptSpec {
        short: None,
        long: "redis-host",
        takes_arg: true,
        id: OptId::RedisHost,
    },
    OptSpec {
        short: None,
        long: "redis-port",
        takes_arg: true,
        id: OptId::RedisPort,
    },
    OptSpec {
        short: None,
        long: "client-grace",
        takes_arg: true,
        id: OptId::ClientGrace,
    },
    OptSpec {
        short: Some('V'),
        long: "version",
        takes_arg: false,
        id: OptId::Version,
    },
    OptSpec {
        short: Some('h'),
        long: "help",
        takes_arg: false,
        id: OptId::Help,
    },
];

/// One parsed option with its argument, and how the user spelled it (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Opt {
    pub(crate) id: OptId,
    pub(crate) spelled: String,
    pub(crate) arg: Option<String>,
}

/// The command line split into options (in order) and operands.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) opts: Vec<Opt>,
    pub(crate) operands: Vec<String>,
}

/// Splits `args` (without the program name). Errors use getopt's wording.
pub(crate) fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            out.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let spec = find_long(name)?;
            let spelled = format!("--{}", spec.long);
            let arg = if spec.takes_arg {
                match inline {
                    Some(v) => Some(v),
                    None if i < args.len() => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    None => return Err(format!("option '{spelled}' requires an argument")),
                }
            } else if inline.is_some() {
                return Err(format!("option '{spelled}' doesn't allow an argument"));
            } else {
                None
            };
            out.opts.push(Opt {
                id: spec.id,
                spelled,
                arg,
            });
        } else if a.len() > 1 && a.starts_with('-') {
            let cluster = &a[1..];
            for (pos, c) in cluster.char_indices() {
                let spec = OPTS
                    .iter()
                    .find(|o| o.short == Some(c))
                    .ok_or_else(|| format!("invalid option -- '{c}'"))?;
                let spelled = format!("-{c}");
                if !spec.takes_arg {
                    out.opts.push(Opt {
                        id: spec.id,
                        spelled,
                        arg: None,
                    });
                    continue;
                }
                let rest = &cluster[pos + c.len_utf8()..];
                let arg = if !rest.is_empty() {
                    rest.to_string()
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return Err(format!("option requires an argument -- '{c}'"));
                };
                out.opts.push(Opt {
                    id: spec.id,
                    spelled,
                    arg: Some(arg),
                });
                break;
            }
        } else {
            out.operands.push(a.clone());
        }
    }
    Ok(out)
}

fn find_long(name: &str) -> Result<&'static OptSpec, String> {
    if let Some(spec) = OPTS.iter().find(|o| o.long == name) {
        return Ok(spec);
    }
    let mut candidates = OPTS
        .iter()
        .filter(|o| !name.is_empty() && o.long.starts_with(name));
    match (candidates.next(), candidates.next()) {
        (Some(spec), None) => Ok(spec),
        (Some(_), Some(_)) => Err(format!("option '--{name}' is ambiguous")),
        _ => Err(format!("unrecognized option '--{name}'")),
    }
}

/// The `-h` text. The defaults shown are the real ones (upstream's help text is wrong about
/// the redis port and the client grace).
pub(crate) fn usage(prog: &str) -> String {
    format!(
        "Usage: {prog} [options] <mountpoint>\n\
         \n\
         Options:\n\
         \x20 -v, --verbose            raise the log level (repeatable)\n\
         \x20 -q, --quiet              lower the log level (repeatable)\n\
         \x20 -c, --config <path>      config file (default $COORDINATOOL_CONF, else /etc/coordinatool.conf)\n\
         \x20 -A, --archive <id>       archive id to serve (repeatable, default: any)\n\
         \x20 -p, --port <port>        listen port (default 5123)\n\
         \x20 -H, --host <host>        listen address (default coordinatool)\n\
         \x20     --redis-host <host>  redis host (default localhost; empty disables redis)\n\
         \x20     --redis-port <port>  redis port (default 6379)\n\
         \x20     --client-grace <ms>  grace period of disconnected clients (default 600000 = 10 min)\n\
         \x20 -V, --version            print the version and exit\n\
         \x20 -h, --help               print this help and exit\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn ids(p: &Parsed) -> Vec<(OptId, Option<&str>)> {
        p.opts.iter().map(|o| (o.id, o.arg.as_deref())).collect()
    }

    #[test]
    fn bundles_and_attached_arguments() {
        let r = p(&["-vvq", "-A1", "-A", "2", "-c/etc/x.conf", "/mnt"]).unwrap();
        assert_eq!(
            ids(&r),
            vec![
                (OptId::Verbose, None),
                (OptId::Verbose, None),
                (OptId::Quiet, None),
                (OptId::Archive, Some("1")),
                (OptId::Archive, Some("2")),
                (OptId::Config, Some("/etc/x.conf")),
            ]
        );
        assert_eq!(r.operands, vec!["/mnt"]);
    }

    #[test]
    fn long_forms_and_abbreviations() {
        let r = p(&[
            "/mnt",
            "--redis-host=",
            "--redis-port",
            "7000",
            "--client-g=5",
            "--arch",
            "3",
        ])
        .unwrap();
        assert_eq!(
            ids(&r),
            vec![
                (OptId::RedisHost, Some("")),
                (OptId::RedisPort, Some("7000")),
                (OptId::ClientGrace, Some("5")),
                (OptId::Archive, Some("3")),
            ]
        );
        assert_eq!(
            r.operands,
            vec!["/mnt"],
            "operands may come first (permutation)"
        );
    }

    #[test]
    fn double_dash_ends_options() {
        let r = p(&["-v", "--", "-q"]).unwrap();
        assert_eq!(ids(&r), vec![(OptId::Verbose, None)]);
        assert_eq!(r.operands, vec!["-q"]);
        assert_eq!(p(&["-"]).unwrap().operands, vec!["-"]);
    }

    #[test]
    fn errors_use_getopt_wording() {
        assert_eq!(p(&["-x"]).unwrap_err(), "invalid option -- 'x'");
        assert_eq!(
            p(&["-A"]).unwrap_err(),
            "option requires an argument -- 'A'"
        );
        assert_eq!(
            p(&["--port"]).unwrap_err(),
            "option '--port' requires an argument"
        );
        assert_eq!(p(&["--nope"]).unwrap_err(), "unrecognized option '--nope'");
        assert_eq!(
            p(&["--redis"]).unwrap_err(),
            "option '--redis' is ambiguous"
        );
        assert_eq!(
            p(&["--verbose=2"]).unwrap_err(),
            "option '--verbose' doesn't allow an argument"
        );
    }
}
