//! Reading a descriptor configuration from a file or a directory of files.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{ConfigError, Domain};

/// The largest file read, in bytes: a descriptor file is a few kilobytes.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Every domain, by name: what one load of the configuration found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RlsConfig {
    domains: HashMap<String, Domain>,
    files: Vec<PathBuf>,
}

impl RlsConfig {
    /// Reads `path`: one YAML file, or every `*.yaml` and `*.yml` file directly in a
    /// directory (in name order; hidden files skipped), one domain per file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and field: a path that cannot be read, a file
    /// larger than [`MAX_FILE_BYTES`], a file refused by [`Domain::parse`], or two files
    /// for one domain.
    pub fn load(path: &Path) -> Result<RlsConfig, ConfigError> {
        let shown = path.display().to_string();
        let meta = fs::metadata(path)
            .map_err(|e| ConfigError::new(&shown, "", format!("cannot read: {e}")))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            let entries = fs::read_dir(path)
                .map_err(|e| ConfigError::new(&shown, "", format!("cannot list: {e}")))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| ConfigError::new(&shown, "", format!("cannot list: {e}")))?;
                let file = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
                if !yaml || name.starts_with('.') {
                    continue;
                }
                // Kubernetes mounts a ConfigMap as symbolic links: follow them. A file that
                // cannot be looked at is an error, not a domain silently gone.
                match fs::metadata(&file) {
                    Ok(m) if m.is_file() => files.push(file),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // a dangling link
                    Err(e) => {
                        let shown = file.display().to_string();
                        return Err(ConfigError::new(&shown, "", format!("cannot read: {e}")));
                    }
                }
            }
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut texts = Vec::with_capacity(files.len());
        for file in &files {
            texts.push((file.display().to_string(), read(file)?));
        }
        let mut config =
            RlsConfig::from_texts(texts.iter().map(|(o, t)| (o.as_str(), t.as_str())))?;
        config.files = files;
        Ok(config)
    }

    /// The domains of several files' texts, each with the name errors give it.
    ///
    /// # Errors
    /// As [`Domain::parse`], and two texts for one domain.
    pub fn from_texts<'a>(
        texts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<RlsConfig, ConfigError> {
        let mut domains: HashMap<String, Domain> = HashMap::new();
        let mut origins: HashMap<String, String> = HashMap::new();
        for (origin, text) in texts {
            let domain = Domain::parse(text, origin)?;
            if let Some(first) = origins.get(domain.name()) {
                return Err(ConfigError::new(
                    origin,
                    "domain",
                    format!("domain {:?} is also defined in {first}", domain.name()),
                ));
            }
            origins.insert(domain.name().to_owned(), origin.to_owned());
            domains.insert(domain.name().to_owned(), domain);
        }
        Ok(RlsConfig {
            domains,
            files: Vec::new(),
        })
    }

    /// The domain named `name`, if configured.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// Every domain, in no order.
    pub fn domains(&self) -> impl ExactSizeIterator<Item = &Domain> {
        self.domains.values()
    }

    /// The files it was read from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

fn read(file: &Path) -> Result<String, ConfigError> {
    let shown = file.display().to_string();
    let cannot = |e: std::io::Error| ConfigError::new(&shown, "", format!("cannot read: {e}"));
    let mut text = String::new();
    fs::File::open(file)
        .map_err(cannot)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::new(
            &shown,
            "",
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}
