"""Installing a model dock: the dock, its "Load … weights…" entry in the Models menu (with a main
window), its session state and its shutdown hook."""

from __future__ import annotations


def install_model_dock(controller, panel, *, title: str, tabify: bool, state_name: str, action: str,
                       action_text: str, tip: str):
    """Add ``panel`` as the right-hand dock ``title`` and wire it; returns the panel. The panel
    has ``show_weights_dialog``, ``get_state``/``set_state`` and ``shutdown``."""
    controller.add_dock(panel, title, "right", tabify=tabify)
    if controller.window is not None:
        controller.window.add_action("models", action, action_text,
                                     lambda _checked=False: panel.show_weights_dialog(), tip=tip)
    controller.register_state_provider(state_name, panel.get_state, panel.set_state)
    controller.add_shutdown_hook(panel.shutdown)
    return panel
