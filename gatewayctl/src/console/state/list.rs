//! The table tabs' shared list: rows, a selection, and the `/` filter, with the movement keys
//! every table tab answers the same way.
//!
//! **Invariant:** `selected` indexes the rows that pass the filter and stays within them.

use ratatui::crossterm::event::KeyCode;

/// A list with a selection and a filter, shared by the table tabs.
#[derive(Debug, Clone)]
pub struct List<T> {
    pub items: Vec<T>,
    /// Index into the filtered rows.
    pub selected: usize,
    pub filter: String,
    pub loaded: bool,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            selected: 0,
            filter: String::new(),
            loaded: false,
        }
    }
}

/// Something that can be matched by the `/` filter.
pub trait Filterable {
    /// The text the filter searches (case-insensitive).
    fn haystack(&self) -> String;
}

impl<T: Filterable> List<T> {
    /// The rows that pass the filter.
    pub fn visible(&self) -> Vec<&T> {
        self.passing().collect()
    }

    fn passing(&self) -> impl Iterator<Item = &T> {
        let needle = self.filter.to_lowercase();
        self.items
            .iter()
            .filter(move |i| needle.is_empty() || i.haystack().to_lowercase().contains(&needle))
    }

    /// How many rows pass the filter; without a filter this costs nothing.
    pub fn visible_len(&self) -> usize {
        if self.filter.is_empty() {
            self.items.len()
        } else {
            self.passing().count()
        }
    }

    /// At most `len` rows that pass the filter, from the `offset`th on. Without a filter this
    /// touches only those rows, so a table over 100 000 items draws as fast as over ten.
    pub fn window(&self, offset: usize, len: usize) -> Vec<&T> {
        if self.filter.is_empty() {
            let end = self.items.len().min(offset.saturating_add(len));
            self.items
                .get(offset.min(end)..end)
                .unwrap_or_default()
                .iter()
                .collect()
        } else {
            self.passing().skip(offset).take(len).collect()
        }
    }

    /// The selected row.
    pub fn current(&self) -> Option<&T> {
        self.window(self.selected, 1).first().copied()
    }

    /// Replaces the rows (a fetch answered) and keeps the selection in range.
    pub fn replace(&mut self, items: Vec<T>) {
        self.items = items;
        self.loaded = true;
        self.clamp();
    }

    /// Keeps the selection within the rows that pass the filter.
    pub fn clamp(&mut self) {
        let n = self.visible_len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }

    /// Moves the selection by `delta` rows, stopping at the ends.
    pub fn step(&mut self, delta: isize) {
        let n = self.visible_len();
        if n == 0 {
            self.selected = 0;
            return;
        }
        self.selected = self.selected.saturating_add_signed(delta).min(n - 1);
    }
}

/// The first visible row for a window of `height` rows that shows `selected`.
pub fn scroll_offset(selected: usize, height: usize) -> usize {
    if height == 0 {
        return 0;
    }
    selected.saturating_sub(height - 1)
}

/// How far a movement key moves the selection; `None` for any other key.
pub fn movement(code: KeyCode) -> Option<isize> {
    match code {
        KeyCode::Down | KeyCode::Char('j') => Some(1),
        KeyCode::Up | KeyCode::Char('k') => Some(-1),
        KeyCode::PageDown => Some(10),
        KeyCode::PageUp => Some(-10),
        KeyCode::Home | KeyCode::Char('g') => Some(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => Some(isize::MAX / 2),
        _ => None,
    }
}
