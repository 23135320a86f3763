// A Vue component of its own around part of a page, and nothing else: it draws a plain <div> with its
// children. NiceGUI re-renders the nearest enclosing *component* whenever an element's list of children
// changes, and Vue then re-renders that component's whole subtree; a boundary keeps such a re-render
// inside it (ui/components/render_boundary.py explains why the insertion page needs it).
export default {
  template: `<div><slot></slot></div>`,
};
