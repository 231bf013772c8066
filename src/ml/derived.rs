//! A value derived from a model's stored parts on first use and never
//! serialised: a compiled ensemble, a category lookup. Models are used long
//! after they were trained or loaded and do not change once built, so the
//! derived value stays true. Two of them always compare equal (it is not part
//! of what a model is), and a clone starts empty.

use std::sync::OnceLock;

pub struct Derived<T>(OnceLock<T>);

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Derived(OnceLock::new())
    }
}

impl<T> Derived<T> {
    pub fn get_or_init(&self, build: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(build)
    }
}

impl<T> Clone for Derived<T> {
    fn clone(&self) -> Self {
        Derived::default()
    }
}

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "derived"
        } else {
            "not yet derived"
        })
    }
}
