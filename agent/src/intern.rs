//! Interned strings with reference counts: the requester and justification of a million
//! grants usually come from a handful of people and tickets, so each text is kept once and a
//! grant holds a 4-byte handle. A text goes when its last grant does.

use crate::slab::{Keyed, KeyedSlab};
use std::sync::Arc;

#[derive(Clone)]
struct Interned {
    text: Arc<str>,
    refs: u32,
}

impl Keyed for Interned {
    type Key = str;
    fn key(&self) -> &str {
        &self.text
    }
}

/// A handle to an interned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sym(u32);

#[derive(Clone)]
pub struct Interner {
    texts: KeyedSlab<Interned>,
    /// What a handle that is not live reads as.
    empty: Arc<str>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            texts: KeyedSlab::default(),
            empty: Arc::from(""),
        }
    }
}

impl Interner {
    /// The handle of `text`, adding it or counting one more holder.
    pub fn intern(&mut self, text: &str) -> Sym {
        if let Some((slot, _)) = self.texts.get(text) {
            if let Some(t) = self.texts.slot_mut(slot) {
                t.refs = t.refs.saturating_add(1);
            }
            return Sym(slot);
        }
        let row = Interned {
            text: Arc::from(text),
            refs: 1,
        };
        // Absent (just checked), so the insert cannot find it present.
        Sym(self.texts.insert(row).unwrap_or(crate::slab::NONE))
    }

    /// One holder fewer; the text goes with the last.
    pub fn release(&mut self, sym: Sym) {
        let last = match self.texts.slot_mut(sym.0) {
            Some(t) => {
                t.refs = t.refs.saturating_sub(1);
                t.refs == 0
            }
            None => false,
        };
        if last {
            self.texts.remove_slot(sym.0);
        }
    }

    /// The text of a handle ("" for a handle that is not live).
    pub fn get(&self, sym: Sym) -> &Arc<str> {
        self.texts.slot(sym.0).map_or(&self.empty, |t| &t.text)
    }

    /// How many distinct texts are held.
    pub fn len(&self) -> usize {
        self.texts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_text_is_kept_once_and_goes_with_its_last_holder() {
        let mut i = Interner::default();
        let a = i.intern("alice");
        let b = i.intern("alice");
        let c = i.intern("bob");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(i.len(), 2);
        assert!(Arc::ptr_eq(i.get(a), i.get(b)));
        i.release(a);
        assert_eq!(&**i.get(b), "alice");
        i.release(b);
        assert_eq!(i.len(), 1);
        assert_eq!(&**i.get(a), "");
        i.release(c);
        assert_eq!(i.len(), 0);
    }
}
