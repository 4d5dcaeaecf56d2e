//! Rows in one vector, addressed by a `u32` slot and found by key through a hash index of
//! slots: the storage under the grant table, the cover index and the string interner.
//!
//! A million rows cost the rows themselves plus about ten bytes each for the index (a
//! `HashMap<K, V>` costs its key and value twice over at that size, because its buckets grow
//! in powers of two). Freed slots are reused; when most slots are free the vector is
//! compacted and the owner told where each row moved.

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash};

/// Slot number meaning "none".
pub const NONE: u32 = u32::MAX;

/// A row that carries its own key.
pub trait Keyed {
    type Key: Hash + Eq + ?Sized;
    fn key(&self) -> &Self::Key;
}

#[derive(Clone)]
pub struct KeyedSlab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl<T> Default for KeyedSlab<T> {
    fn default() -> Self {
        KeyedSlab {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

/// The key of the row in `slot` (a slot the index holds is always filled).
fn key_of<T: Keyed>(slots: &[Option<T>], slot: u32) -> Option<&T::Key> {
    slots
        .get(slot as usize)
        .and_then(Option::as_ref)
        .map(Keyed::key)
}

impl<T: Keyed> KeyedSlab<T> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn hash(&self, key: &T::Key) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot and row with this key.
    pub fn get(&self, key: &T::Key) -> Option<(u32, &T)> {
        let slot = *self
            .index
            .find(self.hash(key), |&s| key_of(&self.slots, s) == Some(key))?;
        self.slot(slot).map(|row| (slot, row))
    }

    pub fn contains(&self, key: &T::Key) -> bool {
        self.get(key).is_some()
    }

    pub fn slot(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub fn slot_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Adds a row; gives it back if its key is already present (the slab is unchanged).
    pub fn insert(&mut self, row: T) -> Result<u32, T> {
        let hash = self.hash(row.key());
        if self
            .index
            .find(hash, |&s| key_of(&self.slots, s) == Some(row.key()))
            .is_some()
        {
            return Err(row);
        }
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(cell) = self.slots.get_mut(s as usize) {
                    *cell = Some(row);
                }
                s
            }
            None => {
                // More than u32::MAX - 1 rows would not fit in memory anyway.
                let s = u32::try_from(self.slots.len()).unwrap_or(NONE - 1);
                self.slots.push(Some(row));
                s
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            key_of(slots, s).map_or(0, |k| hasher.hash_one(k))
        });
        Ok(slot)
    }

    /// Removes the row in `slot`.
    pub fn remove_slot(&mut self, slot: u32) -> Option<T> {
        let hash = self.hash(key_of(&self.slots, slot)?);
        if let Ok(e) = self.index.find_entry(hash, |&s| s == slot) {
            e.remove();
        }
        let row = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        if self.index.is_empty() {
            // Nothing left: give the memory back.
            *self = KeyedSlab::default();
        }
        row
    }

    /// Every row with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i as u32, r)))
    }

    /// Whether most slots are free, so that [`KeyedSlab::compact`] would pay for itself.
    pub fn is_sparse(&self) -> bool {
        self.slots.len() >= 1024 && self.len() * 4 < self.slots.len()
    }

    /// Moves every row to the front, in slot order, and rebuilds the index at its size.
    /// Returns, for each old slot, the new one ([`NONE`] for free slots).
    pub fn compact(&mut self) -> Vec<u32> {
        let mut moved = vec![NONE; self.slots.len()];
        let mut rows = Vec::with_capacity(self.len());
        for (old, row) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if let Some(row) = row {
                if let Some(m) = moved.get_mut(old) {
                    *m = rows.len() as u32;
                }
                rows.push(Some(row));
            }
        }
        let mut index = HashTable::with_capacity(rows.len());
        for (slot, row) in rows.iter().enumerate() {
            if let Some(row) = row {
                let hash = self.hasher.hash_one(row.key());
                let (slots, hasher) = (&rows, &self.hasher);
                index.insert_unique(hash, slot as u32, |&s| {
                    key_of(slots, s).map_or(0, |k| hasher.hash_one(k))
                });
            }
        }
        self.slots = rows;
        self.free = Vec::new();
        self.index = index;
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Row(u64, &'static str);

    impl Keyed for Row {
        type Key = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
    }

    #[test]
    fn insert_find_remove_and_reuse() {
        let mut s = KeyedSlab::default();
        let a = s.insert(Row(1, "a")).unwrap();
        let b = s.insert(Row(2, "b")).unwrap();
        assert_eq!(s.insert(Row(1, "again")), Err(Row(1, "again")));
        assert_eq!(s.get(&1), Some((a, &Row(1, "a"))));
        assert_eq!(s.remove_slot(a), Some(Row(1, "a")));
        assert_eq!(s.get(&1), None);
        assert_eq!(s.remove_slot(a), None);
        // The freed slot is reused.
        assert_eq!(s.insert(Row(3, "c")).unwrap(), a);
        assert_eq!(s.slot(b), Some(&Row(2, "b")));
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn compaction_moves_rows_and_keeps_the_index() {
        let mut s = KeyedSlab::default();
        for i in 0..4000u64 {
            s.insert(Row(i, "x")).unwrap();
        }
        for i in (0..4000u64).filter(|i| i % 10 != 0) {
            let (slot, _) = s.get(&i).unwrap();
            s.remove_slot(slot).unwrap();
        }
        assert!(s.is_sparse());
        let moved = s.compact();
        assert_eq!(moved.len(), 4000);
        assert_eq!(moved[10], 1);
        assert_eq!(moved[11], NONE);
        assert!(!s.is_sparse());
        for i in 0..4000u64 {
            assert_eq!(s.get(&i).is_some(), i % 10 == 0, "{i}");
        }
        assert_eq!(s.get(&3990).map(|(slot, _)| slot), Some(399));
    }

    #[test]
    fn emptied_slab_starts_over() {
        let mut s = KeyedSlab::default();
        for i in 0..100u64 {
            s.insert(Row(i, "x")).unwrap();
        }
        for i in 0..100u64 {
            let (slot, _) = s.get(&i).unwrap();
            s.remove_slot(slot).unwrap();
        }
        assert!(s.is_empty());
        assert_eq!(s.insert(Row(7, "y")).unwrap(), 0);
    }
}
