"""One module per paper figure or table: the runs it needs at each scale and how it is drawn.
``python -m experiments --scale smoke`` (``make figures``) launches what is missing and draws them."""
