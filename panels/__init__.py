"""The add-on's UI: View3D > Sidebar > "EMOCA" (panels in the order of the job), and an
"EMOCA Face Capture" submenu in the 3D View's Object menu (plus File > Export) so every
operator is also found by F3 menu search."""
import importlib

MODULES = ("sidebar", "retarget", "emotion")

_registered: list = []


def _modules():
    return [importlib.import_module(f"{__name__}.{m}") for m in MODULES]


def classes() -> list:
    out = []
    for mod in _modules():
        out.extend(mod.CLASSES)
    return out


def register():
    import bpy
    if _registered:
        unregister()
    for cls in classes():
        bpy.utils.register_class(cls)
        _registered.append(lambda cls=cls: cls.is_registered and bpy.utils.unregister_class(cls))
    for mod in _modules():
        for menu_name, fn in getattr(mod, "MENU_HOOKS", ()):
            menu = getattr(bpy.types, menu_name, None)
            if menu is not None:
                menu.append(fn)
                _registered.append(lambda menu=menu, fn=fn: menu.remove(fn))


def unregister():
    while _registered:
        undo = _registered.pop()
        try:
            undo()
        except (RuntimeError, ValueError) as e:
            print(f"EMOCA: unregister: {e}")
