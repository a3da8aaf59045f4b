//! Secrets in configuration: only ever by reference (`{ env: NAME }` or `{ file: path }`),
//! resolved once at load time, and never printed.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret comes from, as written in YAML. Inline values are not accepted, so a
/// secret cannot end up in a config file that is committed or shared.
#[derive(Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.env, &self.file) {
            (Some(e), _) => write!(f, "{{ env: {e} }}"),
            (_, Some(p)) => write!(f, "{{ file: {p} }}"),
            _ => f.write_str("{ }"),
        }
    }
}

/// A resolved secret value. `Debug` and `Display` print only where it came from.
#[derive(Clone)]
pub struct Secret {
    source: String,
    value: String,
}

impl Secret {
    /// Reads the referenced value. `base` is the directory relative file paths are taken from
    /// (the directory of `gateway.yaml`). Trailing newlines of files are dropped, since
    /// secret files written by `echo` or by Kubernetes often end with one.
    pub fn resolve(r: &SecretRef, base: &Path) -> Result<Secret, String> {
        match (&r.env, &r.file) {
            (Some(name), None) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(Secret {
                    source: format!("env:{name}"),
                    value: v,
                }),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(_) => Err(format!("environment variable {name} is not set")),
            },
            (None, Some(file)) => {
                let path: PathBuf = base.join(file);
                match std::fs::read_to_string(&path) {
                    Ok(v) => {
                        let v = v.trim_end_matches(['\r', '\n']).to_string();
                        if v.is_empty() {
                            Err(format!("secret file {} is empty", path.display()))
                        } else {
                            Ok(Secret {
                                source: format!("file:{file}"),
                                value: v,
                            })
                        }
                    }
                    Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
                }
            }
            _ => Err("a secret is `{ env: NAME }` or `{ file: path }`, exactly one of them".into()),
        }
    }

    /// The secret itself. Call sites are few and easy to audit with a search.
    /// A value written inline where a reference was optional (a Redis URL without a
    /// password, say); still never printed.
    pub fn inline(source: &str, value: String) -> Secret {
        Secret {
            source: source.to_string(),
            value,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    #[cfg(test)]
    pub fn for_tests(value: &str) -> Secret {
        Secret {
            source: "test".into(),
            value: value.into(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, redacted)", self.source)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret from {}>", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::for_tests("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_secrets_lose_trailing_newline_and_are_relative_to_base() {
        let dir = std::env::temp_dir().join(format!("pc-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tok"), "abc\n").unwrap();
        let r = SecretRef {
            env: None,
            file: Some("tok".into()),
        };
        assert_eq!(Secret::resolve(&r, &dir).unwrap().expose(), "abc");
        let both = SecretRef {
            env: Some("X".into()),
            file: Some("tok".into()),
        };
        assert!(Secret::resolve(&both, &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_env_is_an_error_naming_the_variable() {
        let r = SecretRef {
            env: Some("PORTCULLIS_TEST_SURELY_UNSET".into()),
            file: None,
        };
        let e = Secret::resolve(&r, Path::new(".")).unwrap_err();
        assert!(e.contains("PORTCULLIS_TEST_SURELY_UNSET"));
    }
}
