//! `switch_xml` trees built from a configuration file, laid out the way
//! FreeSWITCH's ezxml-derived parser links them: `child` is the first child,
//! `sibling` the first element of the next tag name, `next` the next element
//! with the same name, `ordered` the next element in document order.
//!
//! Like FreeSWITCH, `switch_xml_open_cfg` hands out the root of a whole
//! document (`<document><section name="configuration"><configuration ...>`)
//! and the `<configuration>` element separately.

use std::ffi::{c_char, CString};
use std::ptr;

use crate::types::{switch_bool_t, switch_xml, switch_xml_t, SWITCH_FALSE, SWITCH_TRUE};

/// One parsed document. Its nodes stay allocated even after `switch_xml_free`
/// (the host keeps them), so a module that uses a freed tree is reported, not
/// crashed.
pub(crate) struct XmlDoc {
    // Boxed: the module holds pointers to nodes, which must not move as the Vec grows.
    #[allow(clippy::vec_box)]
    nodes: Vec<Box<switch_xml>>,
    strings: Vec<CString>,
    attrs: Vec<Box<[*mut c_char]>>,
    /// The document root (what `switch_xml_open_cfg` returns).
    pub(crate) root: switch_xml_t,
    /// The `<configuration>` element (what it stores in `*node`).
    pub(crate) config: switch_xml_t,
}

// SAFETY: the raw pointers point into the document's own boxes, which move
// with it; the host only touches them under its XML registry lock.
unsafe impl Send for XmlDoc {}

impl std::fmt::Debug for XmlDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmlDoc")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl XmlDoc {
    /// Parses `text` (a file with a `<configuration>` element at its top) and
    /// wraps it in the FreeSWITCH document structure.
    pub(crate) fn parse(text: &str) -> Result<XmlDoc, String> {
        let parsed = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
        let top = parsed.root_element();
        if top.tag_name().name() != "configuration" {
            return Err(format!(
                "top element is <{}>, not <configuration>",
                top.tag_name().name()
            ));
        }
        let mut doc = XmlDoc {
            nodes: Vec::new(),
            strings: Vec::new(),
            attrs: Vec::new(),
            root: ptr::null_mut(),
            config: ptr::null_mut(),
        };
        let root = doc.node(
            "document",
            &[("type", "freeswitch/xml")],
            "",
            ptr::null_mut(),
        );
        let section = doc.node(
            "section",
            &[
                ("name", "configuration"),
                ("description", "Various Configuration"),
            ],
            "",
            root,
        );
        doc.link_children(root, &[section]);
        let config = doc.build(top, section);
        doc.link_children(section, &[config]);
        // SAFETY: `root` is one of this document's live boxes.
        unsafe { (*root).is_switch_xml_root_t = SWITCH_TRUE as switch_bool_t };
        doc.root = root;
        doc.config = config;
        Ok(doc)
    }

    /// Whether `xml` is one of this document's nodes.
    pub(crate) fn contains(&self, xml: switch_xml_t) -> bool {
        self.nodes.iter().any(|n| ptr::eq(&**n, xml))
    }

    /// Every node's address (for the host's registry of valid nodes).
    pub(crate) fn node_addresses(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| &**n as *const switch_xml as usize)
            .collect()
    }

    fn build(&mut self, element: roxmltree::Node<'_, '_>, parent: switch_xml_t) -> switch_xml_t {
        let attrs: Vec<(&str, &str)> = element
            .attributes()
            .map(|a| (a.name(), a.value()))
            .collect();
        let text: String = element
            .children()
            .filter(|c| c.is_text())
            .filter_map(|c| c.text())
            .collect();
        let node = self.node(element.tag_name().name(), &attrs, text.trim(), parent);
        let children: Vec<switch_xml_t> = element
            .children()
            .filter(|c| c.is_element())
            .map(|c| self.build(c, node))
            .collect();
        self.link_children(node, &children);
        node
    }

    fn cstring(&mut self, text: &str) -> *mut c_char {
        let owned = CString::new(text.replace('\0', "")).unwrap_or_default();
        let pointer = owned.as_ptr() as *mut c_char;
        self.strings.push(owned);
        pointer
    }

    fn node(
        &mut self,
        name: &str,
        attrs: &[(&str, &str)],
        text: &str,
        parent: switch_xml_t,
    ) -> switch_xml_t {
        // ezxml's attribute list: name, value, ..., NULL, then a flags string.
        let mut list: Vec<*mut c_char> = Vec::with_capacity(attrs.len() * 2 + 2);
        for (key, value) in attrs {
            list.push(self.cstring(key));
            list.push(self.cstring(value));
        }
        list.push(ptr::null_mut());
        list.push(self.cstring(""));
        let mut list = list.into_boxed_slice();
        let attr = list.as_mut_ptr();
        self.attrs.push(list);
        let mut node = Box::new(switch_xml {
            name: ptr::null_mut(),
            attr,
            txt: ptr::null_mut(),
            free_path: ptr::null_mut(),
            off: 0,
            next: ptr::null_mut(),
            sibling: ptr::null_mut(),
            ordered: ptr::null_mut(),
            child: ptr::null_mut(),
            parent,
            flags: 0,
            is_switch_xml_root_t: SWITCH_FALSE as switch_bool_t,
            refs: 0,
            open: std::ptr::null(),
            close: std::ptr::null(),
        });
        node.name = self.cstring(name);
        node.txt = self.cstring(text);
        let pointer: switch_xml_t = &mut *node;
        self.nodes.push(node);
        pointer
    }

    fn link_children(&mut self, parent: switch_xml_t, children: &[switch_xml_t]) {
        // SAFETY: all pointers are live boxes of this document.
        unsafe {
            (*parent).child = children.first().copied().unwrap_or(ptr::null_mut());
            let mut heads: Vec<switch_xml_t> = Vec::new();
            for (i, &child) in children.iter().enumerate() {
                (*child).ordered = children.get(i + 1).copied().unwrap_or(ptr::null_mut());
                let name = std::ffi::CStr::from_ptr((*child).name);
                if let Some(&head) = heads
                    .iter()
                    .find(|&&h| std::ffi::CStr::from_ptr((*h).name) == name)
                {
                    let mut last = head;
                    while !(*last).next.is_null() {
                        last = (*last).next;
                    }
                    (*last).next = child;
                } else {
                    if let Some(&previous) = heads.last() {
                        (*previous).sibling = child;
                    }
                    heads.push(child);
                }
            }
        }
    }
}
