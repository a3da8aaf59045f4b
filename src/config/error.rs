//! Configuration errors: every one names its file, YAML path and (when known) line and
//! column, and they are collected and reported together.

use super::node::Pos;
use std::fmt;
use std::path::{Path, PathBuf};

/// One mistake in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// YAML path such as `routes[3].require.acr`; empty when the whole file is at fault.
    pub path: String,
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one load of the configuration, in file order.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
    pub fn len(&self) -> usize {
        self.errors.len()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors and warnings for one file at a time.
pub struct Diagnostics {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl Diagnostics {
    pub fn new() -> Self {
        Diagnostics {
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, file: &Path, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: file.to_path_buf(),
            path: path.to_string(),
            pos,
            message: message.into(),
        });
    }

    pub fn warn(&mut self, file: &Path, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            file: file.to_path_buf(),
            path: path.to_string(),
            pos,
            message: message.into(),
        });
    }
}

impl Default for Diagnostics {
    fn default() -> Self {
        Self::new()
    }
}
