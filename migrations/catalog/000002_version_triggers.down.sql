DROP TRIGGER stock_version ON stock;
DROP TRIGGER stores_version ON stores;
DROP TRIGGER products_version ON products;
DROP TRIGGER categories_version ON categories;
