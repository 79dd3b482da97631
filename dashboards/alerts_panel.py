"""The page's alerts line: under the headline, only when `forecast refit --all` recorded alerts for the theater."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from forecast import dashboard_view as view


def alerts_section(theater: str) -> None:
    found = view.alerts_for(theater)
    if not found:
        return
    newest = found[0]
    more = f" · {len(found) - 1} earlier" if len(found) > 1 else ""
    st.markdown(f"🔔 **Alerts:** {newest['message']} — {newest['when']}, run `{newest['new_run_id']}` "
                f"({newest['status']}){more}")
    if len(found) > 1:
        with st.expander(f"All {len(found)} alerts (`forecast alerts {theater}`)"):
            st.dataframe(pd.DataFrame([{"raised": r["created_at"], "alert": r["message"], "as of": r["as_of"],
                                        "run": r["new_run_id"], "delivery": r["status"]} for r in found]),
                         hide_index=True, width="stretch")
