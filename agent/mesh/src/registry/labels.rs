//! Labels and annotations as the registry keeps them: a read-only map in two allocations (the
//! keys and values back to back, and where each ends). A `BTreeMap<String, String>` takes a
//! 540-byte node plus one allocation per string however few entries it has, and every pod,
//! Service and namespace holds one; at 10,000 pods that was most of the registry's heap.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// A sorted, immutable string map.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// Each key then its value, sorted by key.
    text: Box<str>,
    /// Where each key and each value ends in `text`, alternately.
    ends: Box<[u32]>,
}

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        let mut found = None;
        for (k, v) in self.iter() {
            if k == key {
                found = Some(v);
                break;
            }
        }
        found
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.chunks_exact(2).map(move |pair| {
            let (key_end, value_end) = (pair[0] as usize, pair[1] as usize);
            let entry = (&self.text[start..key_end], &self.text[key_end..value_end]);
            start = value_end;
            entry
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// A later entry for the same key replaces an earlier one, as in a map. Text past 4 GiB,
    /// which no Kubernetes object can carry (the API server caps one at 1.5 MiB), is cut.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let sorted: BTreeMap<String, String> = entries
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let mut text = String::with_capacity(sorted.iter().map(|(k, v)| k.len() + v.len()).sum());
        let mut ends = Vec::with_capacity(sorted.len() * 2);
        for (key, value) in &sorted {
            let Some(end) = u32::try_from(text.len() + key.len() + value.len()).ok() else {
                break;
            };
            text.push_str(key);
            ends.push(end - u32::try_from(value.len()).unwrap_or(0));
            text.push_str(value);
            ends.push(end);
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Labels {
    fn from(entries: [(&str, &str); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = str;

    /// # Panics
    /// When the key is absent, as a map's index does.
    fn index(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("no label or annotation {key:?}"))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::Labels;

    #[test]
    fn a_label_map_reads_back_what_it_was_given_sorted() {
        let labels = Labels::from([
            ("version", "v1"),
            ("app", "web"),
            ("empty", ""),
            ("app", "api"),
        ]);
        assert_eq!(labels.get("app"), Some("api"), "the later entry wins");
        assert_eq!(labels.get("empty"), Some(""));
        assert_eq!(labels.get("missing"), None);
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            ["app", "empty", "version"]
        );
        assert_eq!(labels.len(), 3);
        assert!(Labels::default().is_empty());
        let json = serde_json::to_string(&labels).expect("serializes");
        assert_eq!(json, r#"{"app":"api","empty":"","version":"v1"}"#);
        assert_eq!(
            serde_json::from_str::<Labels>(&json).expect("parses"),
            labels
        );
    }
}
