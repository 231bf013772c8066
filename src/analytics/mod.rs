//! Analytics over the stage transitions the commit path writes
//! (`lead_transitions`): pure functions over the store's aggregates. The
//! first view is the funnel; time in stage, per owner and source, and the
//! daily trends of issue 17 join here.

pub mod funnel;
