"""Ingest of a real export: every row lands or is quarantined with its reason; reruns change nothing."""

from __future__ import annotations

import datetime as dt
import io
import json
import os

import pandas as pd
import pytest
from chispa import assert_df_equality
from conftest import tiny_config
from PIL import Image
from pyspark.sql import functions as F

from pipeline import ingest, tables

RUN = dt.date(2026, 11, 24)

ITEM_MAP = {"item_id": "article_id", "title": "prod_name", "description": "detail_desc",
            "category": "product_type_name", "merchant_id": "shop", "price": "price",
            "image": "img/{article_id:0>4}.{ext}"}


def image_bytes(fmt: str, color=(200, 30, 30), size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_images(root):
    img = root / "img"
    img.mkdir(parents=True)
    files = {
        "0001.jpg": image_bytes("JPEG"), "0002.png": image_bytes("PNG", (20, 160, 40)),
        "0003.jpg": image_bytes("JPEG", (10, 10, 200)), "0004.jpg": image_bytes("JPEG", (240, 220, 0)),
        "0006.jpg": image_bytes("JPEG", size=(64, 64))[:300],                 # truncated JPEG
        "0007.jpg": bytes(range(256)) * 8,                                    # random bytes
        "0008.jpg": image_bytes("JPEG"), "0009.jpg": image_bytes("JPEG"),
    }
    for name, data in files.items():
        (img / name).write_bytes(data)
    return files


# (article_id, prod_name, detail_desc, product_type_name, shop, price, ext) -> expected reason
ROWS = [
    (("1", "Red apple", "Crisp and sweet", "fruit", "m1", "0.5", "jpg"), None),
    (("2", "Green pear", "", "fruit", "m1", "0.7", "png"), None),
    (("3", "", "Only a description", "veg", "m2", "", "jpg"), None),
    (("4", "Banana (old)", "Yellow", "fruit", "m2", "1.0", "jpg"), ingest.DUPLICATE_ITEM_ID),
    (("4", "Banana", "Yellow, ripe", "fruit", "m2", "1.2", "jpg"), None),   # later row wins
    (("5", "Kiwi", "Hairy", "fruit", "m1", "0.3", "jpg"), ingest.IMAGE_NOT_FOUND),
    (("6", "Plum", "Purple", "fruit", "m1", "0.4", "jpg"), ingest.IMAGE_UNDECODABLE),
    (("7", "Leek", "Long", "veg", "m2", "0.9", "jpg"), ingest.IMAGE_UNDECODABLE),
    (("8", " ", "", "veg", "m2", "0.9", "jpg"), ingest.EMPTY_TEXT),
    (("  ", "Nameless", "No key", "veg", "m2", "0.9", "jpg"), ingest.MISSING_ITEM_ID),
    (("", "Nameless too", "No key", "veg", "m2", "0.9", "jpg"), ingest.MISSING_ITEM_ID),
    (("9", "Lemon", "Sour", "fruit", "m1", "cheap", "jpg"), ingest.INVALID_PRICE),
]


def write_csv(path):
    frame = pd.DataFrame([r for r, _ in ROWS], columns=["article_id", "prod_name", "detail_desc",
                                                       "product_type_name", "shop", "price", "ext"])
    frame.to_csv(path, index=False)


@pytest.fixture()
def export(tmp_path):
    root = tmp_path / "exports"
    files = write_images(root)
    write_csv(root / "articles.csv")
    config = tiny_config(tmp_path)
    cfg = config.ingest.model_copy(update={"items_path": str(root / "articles.csv"), "images_root": str(root),
                                           "item_map": ITEM_MAP, "events_path": None})
    return config, cfg, root, files


def quarantined(spark, config, source, version=None):
    return (tables.read_table(spark, config, "quarantine", version)
            .where((F.col("job") == "ingest") & (F.col("source") == source)))


def test_items_land_or_are_quarantined_and_a_rerun_changes_nothing(spark, export):
    config, cfg, root, files = export
    result = ingest.run_ingest(spark, config, cfg, RUN)

    n_bad = sum(1 for _, reason in ROWS if reason)
    assert (result.items.rows_in, result.items.landed, result.items.quarantined) == (len(ROWS), len(ROWS) - n_bad, n_bad)
    assert result.items.rows_in == result.items.landed + result.items.quarantined
    print(result.summary())

    items = tables.read_table(spark, config, "items")
    landed = {r.item_id: r for r in items.collect()}
    assert sorted(landed) == ["1", "2", "3", "4"]
    assert landed["4"].title == "Banana" and landed["4"].price == 1.2          # the later duplicate
    assert bytes(landed["2"].image) == files["0002.png"]
    assert landed["1"].merchant_id == "m1" and landed["3"].price is None
    assert landed["1"].updated_at == dt.datetime(2026, 11, 24)

    q = quarantined(spark, config, "items")
    got = sorted(((r.key or ""), r.reason) for r in q.collect())
    want = sorted((row[0].strip(), reason) for row, reason in ROWS if reason)
    assert got == want
    payloads = {r.key: json.loads(r.payload) for r in q.collect() if r.key}
    assert "truncated" in payloads["6"]["image_error"].lower()
    assert payloads["5"]["image"] == "img/0005.jpg"
    assert payloads["4"]["title"] == "Banana (old)"
    assert payloads["9"]["price"] == "cheap"

    runs = tables.read_table(spark, config, "runs").where(F.col("job") == "ingest").collect()
    assert len(runs) == 1 and runs[0].status == "ok"
    assert runs[0].counts["items_in"] == runs[0].counts["items_landed"] + runs[0].counts["items_quarantined"]

    # Rerun the same ingest: the items table and this date's quarantine end identical.
    items_v = tables.table_version(spark, config, "items")
    quarantine_v = tables.table_version(spark, config, "quarantine")
    again = ingest.run_ingest(spark, config, cfg, RUN)
    assert again.items == result.items
    assert_df_equality(tables.read_table(spark, config, "items"), tables.read_table(spark, config, "items", items_v),
                       ignore_row_order=True)
    assert_df_equality(quarantined(spark, config, "items"), quarantined(spark, config, "items", quarantine_v),
                       ignore_row_order=True)
    assert tables.read_table(spark, config, "runs").where(F.col("job") == "ingest").count() == 2


def test_nanosecond_parquet_timestamps_are_one_clear_line(spark, tmp_path):
    root = tmp_path / "exports"
    write_images(root)
    pd.DataFrame({"sku": [1], "name": ["Kiwi"], "picture": ["img/0001.jpg"],
                  "changed": pd.Series(pd.to_datetime(["2026-01-01 10:00:00.123456789"])).astype("datetime64[ns]")}
                 ).to_parquet(root / "items.parquet", coerce_timestamps=None)  # what pandas 2 writes by default
    config = tiny_config(tmp_path)
    cfg = ingest.with_flags(config.ingest, items_path=str(root / "items.parquet"), images_root=str(root),
                            item_map=["item_id=sku", "title=name", "image=picture", "updated_at=changed"])
    with pytest.raises(ingest.IngestError, match="nanosecond timestamp column.*coerce_timestamps='us'"):
        ingest.run_ingest(spark, config, cfg, RUN)
    assert not os.path.exists(config.data.root)


def test_parquet_export_events_and_merge_rerun(spark, tmp_path):
    root = tmp_path / "exports"
    files = write_images(root)
    img = root / "img"
    # Parquet with native types; the image column holds relative paths, absolute paths and a file: URI.
    pd.DataFrame({
        "sku": [1, 2, 3, 3],
        "name": ["Red apple", "Green pear", "Kiwi", "Kiwi v2"],
        "changed": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-02-01", "2026-01-15"]),
        "cost": [0.5, 0.7, 0.3, 0.35],
        "picture": ["img/0001.jpg", str(img / "0002.png"), f"file://{img / '0003.jpg'}", "img/0004.jpg"],
    }).to_parquet(root / "items.parquet", coerce_timestamps="us")
    pd.DataFrame({
        "customer": ["u1", "u1", None, "u2", "u3", "u2"],
        "article": ["1", "2", "1", "42", "3", "1"],
        "day": ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "yesterday", "2026-11-05"],
        "paid": ["0.5", "0.7", "0.5", "1.0", "0.3", ""],
    }).to_csv(root / "transactions.csv", index=False)
    config = tiny_config(tmp_path)
    cfg = ingest.with_flags(
        config.ingest, items_path=str(root / "items.parquet"), images_root=str(root),
        events_path=str(root / "transactions.csv"),
        item_map=["item_id=sku", "title=name", "description=", "category=", "merchant_id=const:shop-1",
                  "price=cost", "image=picture", "updated_at=changed"],
        event_map=["user_id=customer", "item_id=article", "ts=day", "price=paid"])
    result = ingest.run_ingest(spark, config, cfg, RUN)

    items = {r.item_id: r for r in tables.read_table(spark, config, "items").collect()}
    assert sorted(items) == ["1", "2", "3"]
    assert items["3"].title == "Kiwi" and bytes(items["3"].image) == files["0003.jpg"]   # latest updated_at wins
    assert items["1"].merchant_id == "shop-1" and items["1"].category is None
    assert (result.items.rows_in, result.items.landed, result.items.reasons) == (4, 3, {ingest.DUPLICATE_ITEM_ID: 1})

    events = tables.read_table(spark, config, "events")
    assert sorted((r.user_id, r.item_id, r.event, r.price) for r in events.collect()) == [
        ("u1", "1", "purchase", 0.5), ("u1", "2", "purchase", 0.7), ("u2", "1", "purchase", None)]
    assert result.events.rows_in == result.events.landed + result.events.quarantined == 6
    reasons = sorted((r.key, r.reason) for r in quarantined(spark, config, "events").collect())
    assert reasons == sorted([("|1|2026-11-03", ingest.MISSING_USER_ID), ("u2|42|2026-11-04", ingest.UNKNOWN_ITEM_ID),
                              ("u3|3|yesterday", ingest.INVALID_TS)])

    # The same exports merged into the tables change no row.
    versions = {name: tables.table_version(spark, config, name) for name in ("items", "events", "quarantine")}
    merged = ingest.with_flags(cfg, mode="merge")
    ingest.run_ingest(spark, config, merged, RUN)
    assert_df_equality(tables.read_table(spark, config, "items"),
                       tables.read_table(spark, config, "items", versions["items"]), ignore_row_order=True)
    assert_df_equality(tables.read_table(spark, config, "events"),
                       tables.read_table(spark, config, "events", versions["events"]), ignore_row_order=True)
    assert_df_equality(tables.read_table(spark, config, "quarantine"),
                       tables.read_table(spark, config, "quarantine", versions["quarantine"]), ignore_row_order=True)


def test_unknown_mapped_column_is_one_line_before_any_write(spark, export, capsys):
    from pipeline.jobs.ingest_catalog import main

    config, cfg, root, _ = export
    conf = root / "conf.yaml"
    conf.write_text(f"name: t\ndata: {{root: {config.data.root}}}\n")
    code = main(["--conf", str(conf), "--items-path", str(root / "articles.csv"), "--images-root", str(root),
                 "--map", "item_id=article_id", "--map", "merchant_id=shop", "--map", "image=img/{article_id}.jpg",
                 "--map", "title=prod_nam", "--run-date", "2026-11-24"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "'prod_nam' (mapped to title)" in err and "available columns: article_id, prod_name, detail_desc" in err
    assert not os.path.exists(config.data.root)

    with pytest.raises(ingest.IngestError, match=r"no column 'sku' \(mapped to image template"):
        ingest.run_ingest(spark, config, ingest.with_flags(cfg, item_map=["image={sku}.jpg"]), RUN)
    assert not os.path.exists(config.data.root)


# ------------------------------------------------------------------------ faults: what ingest refuses


def bad_reasons(spark, config, source):
    return sorted((r.key or "", r.reason) for r in quarantined(spark, config, source).collect())


@pytest.mark.faults
def test_images_outside_the_root_empty_or_too_large_are_refused_unread(spark, tmp_path):
    root = tmp_path / "exports"
    files = write_images(root)
    img, sibling = root / "img", tmp_path / "sibling"
    sibling.mkdir()
    with open(sibling / "huge.jpg", "wb") as f:   # sparse, 3 GiB: binaryFile fails on any file over 2 GiB it opens
        f.truncate(3 << 30)
    (sibling / "fine.jpg").write_bytes(image_bytes("JPEG"))
    (img / "passwd.jpg").symlink_to("/etc/passwd")
    (img / "huge.jpg").symlink_to(sibling / "huge.jpg")
    (img / "sibling.jpg").symlink_to(sibling / "fine.jpg")
    (img / "alias.jpg").symlink_to(img / "0001.jpg")          # a link that stays inside lands
    (img / "empty.jpg").write_bytes(b"")
    big = io.BytesIO()
    Image.new("1", (12000, 12000)).save(big, "PNG")            # 144 Mpx, a few KB on disk
    (img / "big.png").write_bytes(big.getvalue())
    rows = [("1", "img/alias.jpg", None), ("2", "img/passwd.jpg", ingest.IMAGE_OUTSIDE_ROOT),
            ("3", "img/huge.jpg", ingest.IMAGE_OUTSIDE_ROOT), ("4", "img/sibling.jpg", ingest.IMAGE_OUTSIDE_ROOT),
            ("5", "../sibling/fine.jpg", ingest.IMAGE_OUTSIDE_ROOT), ("6", f"{img}/../../sibling/fine.jpg", ingest.IMAGE_OUTSIDE_ROOT),
            ("7", "img/../img/0002.png", None), ("8", "img/empty.jpg", ingest.IMAGE_EMPTY),
            ("9", "img/big.png", ingest.IMAGE_TOO_LARGE), ("10", "img/0099.jpg", ingest.IMAGE_NOT_FOUND)]
    pd.DataFrame([(k, f"Item {k}", "m1", p) for k, p, _ in rows], columns=["sku", "name", "shop", "picture"]
                 ).to_csv(root / "items.csv", index=False)
    config = tiny_config(tmp_path)
    cfg = ingest.with_flags(config.ingest, items_path=str(root / "items.csv"), images_root=str(root),
                            item_map=["item_id=sku", "title=name", "description=", "category=", "merchant_id=shop",
                                      "image=picture"])
    assert cfg.max_image_pixels == 40_000_000
    result = ingest.run_ingest(spark, config, cfg, RUN)

    assert bad_reasons(spark, config, "items") == sorted((k, r) for k, _, r in rows if r)
    c = result.items
    assert (c.rows_in, c.landed, c.quarantined) == (len(rows), 2, len(rows) - 2) and c.rows_in == c.landed + c.quarantined
    landed = {r.item_id: bytes(r.image) for r in tables.read_table(spark, config, "items").collect()}
    assert landed == {"1": files["0001.jpg"], "7": files["0002.png"]}
    payloads = {r.key: json.loads(r.payload) for r in quarantined(spark, config, "items").collect()}
    assert payloads["9"]["image_error"] == "12000×12000 px > 40000000 px (ingest.max_image_pixels)"
    assert all("root:" not in json.dumps(p) for p in payloads.values())   # nothing of /etc/passwd anywhere

    # A lower limit catches ordinary images too; the reason says so, not "cannot decode".
    strict = cfg.model_copy(update={"max_image_pixels": 1000})
    again = ingest.run_ingest(spark, config, strict, RUN)
    assert again.items.reasons[ingest.IMAGE_TOO_LARGE] == 3 and again.items.landed == 0


@pytest.mark.faults
def test_prices_must_be_finite_and_not_negative_for_items_and_events(spark, export):
    config, cfg, root, _ = export
    prices = {"11": "NaN", "12": "1e309", "13": "-5", "14": "0", "15": "-0.0"}
    frame = pd.read_csv(root / "articles.csv", dtype=str, keep_default_na=False)
    extra = pd.DataFrame([(k, f"Item {k}", "d", "fruit", "m1", p, "jpg") for k, p in prices.items()], columns=frame.columns)
    for k in prices:
        (root / "img" / f"00{k}.jpg").write_bytes(image_bytes("JPEG"))
    pd.concat([frame, extra]).to_csv(root / "articles.csv", index=False)
    pd.DataFrame({"customer": ["u1"] * 5, "article": ["1"] * 5, "day": ["2026-11-01"] * 5,
                  "paid": ["NaN", "1e309", "-5", "2.5", "Infinity"]}).to_csv(root / "transactions.csv", index=False)
    cfg = ingest.with_flags(cfg, events_path=str(root / "transactions.csv"),
                            event_map=["user_id=customer", "item_id=article", "ts=day", "price=paid"])
    result = ingest.run_ingest(spark, config, cfg, RUN)

    items = {r.item_id: r.price for r in tables.read_table(spark, config, "items").collect()}
    assert items["14"] == 0.0 and items["15"] == 0.0 and not {"11", "12", "13"} & set(items)
    assert {k: r for k, r in bad_reasons(spark, config, "items") if k in prices} == dict.fromkeys(("11", "12", "13"),
                                                                                                  ingest.INVALID_PRICE)
    assert result.events.reasons == {ingest.INVALID_PRICE: 4} and result.events.landed == 1
    assert [r.price for r in tables.read_table(spark, config, "events").collect()] == [2.5]
    assert result.events.rows_in == result.events.landed + result.events.quarantined == 5


@pytest.mark.faults
def test_malformed_csv_lines_are_quarantined_by_line_and_rows_in_counts_the_files_records(spark, export):
    config, cfg, root, files = export
    (root / "articles.csv").write_text(
        "article_id,prod_name,detail_desc,product_type_name,shop,price,ext\n"   # line 1
        "1,Red apple,Crisp,fruit,m1,0.5,jpg\n"                                 # line 2
        '2,"Green pear",Juicy,fruit,m1,0.7,png\n'                              # line 3
        '3,"Broken quote,Sour,veg,m2,1.0,jpg\n'                                # line 4: the quote never closes here
        '4,"Banana, ripe",Yellow,fruit,m2,1.2,jpg\n'                           # line 5: swallowed by line 4
        "7,Extra,col,veg,m2,0.9,jpg,surplus\n"                                 # line 6: a column too many
        '9,"Lemon\nwith a newline",Sour,fruit,m1,0.4,jpg\n'                    # lines 7-8: one good record
        "8,Fig,Sweet,fruit,m1,0.6,jpg\n")                                      # line 9
    pd.DataFrame({"customer": ["u1", "u2", "u3"], "article": ["1", "2", "9"], "day": ["2026-11-01"] * 3,
                  "paid": ["0.5", "0.7", "0.4"]}).to_csv(root / "transactions.csv", index=False)
    with open(root / "transactions.csv", "a") as f:
        f.write('u4,"8,2026-11-02,0.6\nu5,1,2026-11-03,0.5,extra\n')        # lines 5 and 6
    cfg = ingest.with_flags(cfg, events_path=str(root / "transactions.csv"),
                            event_map=["user_id=customer", "item_id=article", "ts=day", "price=paid"])
    result = ingest.run_ingest(spark, config, cfg, RUN)

    c = result.items
    assert (c.rows_in, c.landed, c.quarantined) == (7, 4, 3) and c.reasons == {ingest.MALFORMED_RECORD: 3}
    landed = {r.item_id: r for r in tables.read_table(spark, config, "items").collect()}
    assert sorted(landed) == ["1", "2", "8", "9"] and landed["9"].title == "Lemon\nwith a newline"
    assert landed["8"].price == 0.6 and bytes(landed["8"].image) == files["0008.jpg"]
    bad = sorted((json.loads(r.payload)["line"], r.reason, json.loads(r.payload)["record"])
                 for r in quarantined(spark, config, "items").collect())
    assert [(line, reason) for line, reason, _ in bad] == [(4, ingest.MALFORMED_RECORD), (5, ingest.MALFORMED_RECORD),
                                                           (6, ingest.MALFORMED_RECORD)]
    assert bad[0][2].startswith('3,"Broken quote') and bad[1][2].startswith('4,"Banana') and bad[2][2].endswith("surplus")

    e = result.events
    assert (e.rows_in, e.landed, e.reasons) == (5, 3, {ingest.MALFORMED_RECORD: 2})
    lines = sorted(json.loads(r.payload)["line"] for r in quarantined(spark, config, "events").collect())
    assert lines == [5, 6]
