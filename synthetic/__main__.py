"""``python -m synthetic --contact-sheet data/contact_sheet.png``: example pictures of every category (no Spark)."""

from __future__ import annotations

from synthetic.pictures import contact_sheet


def _main(argv=None) -> int:
    import argparse

    from camenn.config import default_config_path, load_config

    parser = argparse.ArgumentParser(description="The synthetic world's generator (no Spark).")
    parser.add_argument("--conf", default=str(default_config_path()))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--contact-sheet", metavar="PNG", help="draw example images of every category into PNG")
    parser.add_argument("--per-category", type=int, default=8)
    args = parser.parse_args(argv)
    config = load_config(args.conf, args.set)
    if args.contact_sheet:
        world = config.world.model_copy(update={"n_items": min(config.world.n_items, 4000)})
        print(contact_sheet(world, args.contact_sheet, args.per_category))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
