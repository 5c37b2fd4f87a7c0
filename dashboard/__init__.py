"""Streamlit glue shared by the pages: state, the sidebar, Plotly figures. No training logic here."""
