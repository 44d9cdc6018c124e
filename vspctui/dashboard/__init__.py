"""`vspc-tui`: the urwid dashboard, model/view/controller: `model` (what is known of every
console), `views` (widgets that draw the model), `keys` (the key table), `app` (the
controller: admin connection, redraws, dialogs)."""
