"""Study reports: ``records`` turns a study into plain data, ``plots`` draws it with plotly."""
